"""Placement of the serving C thread (``serve_cpu``) against franka-sim.

Real pylibfranka and a real CPU hog: a process spinning on the serving thread's
CPU. Linux keeps waking a real-time thread on its last CPU, so without
placement the serving thread would stay there, taking the hog off its CPU a
thousand times a second. See docs/kernel-serving.md#placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from aiofranka import Controller

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                       reason="kernel serving needs the rescue thread: x86-64 Linux"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                       reason="placement needs two CPUs to choose from"),
]


@contextlib.contextmanager
def hog_on(cpu: int):
    """A process spinning pure Python on ``cpu`` (a user's busy policy or data loader)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        yield hog
    finally:
        hog.kill()
        hog.wait()


def serving_thread_affinity() -> set[int]:
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().startswith("aiofranka-resc"):
                return os.sched_getaffinity(int(tid))
    raise AssertionError("no serving thread (aiofranka-resc) in this process")


def cpu_busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) clock ticks from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in fields[:8]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                out[int(name[3:])] = (busy, busy + v[3] + v[4])
    return out


async def wait_for_moves(controller, moves: int, seconds: float) -> bool:
    for _ in range(int(seconds / 0.1)):
        if controller.stats.serve_moves >= moves:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_least_busy_moves_the_serving_thread_off_a_cpu_another_process_keeps_busy(robot):
    async with Controller(robot, serve="kernel", serve_cpu="least-busy") as controller:
        await controller.wait(0.6)  # a first /proc/stat sample taken
        cpu, moves = controller.stats.serve_cpu, controller.stats.serve_moves
        assert cpu in os.sched_getaffinity(0)
        with hog_on(cpu):
            before = cpu_busy()
            moved = await wait_for_moves(controller, moves + 1, 6.0)
            after = cpu_busy()
            stats = controller.stats
        affinity = serving_thread_affinity()
    if not moved:
        # A loaded CI host may leave no CPU with room, and then staying is right.
        room = {c: 1 - (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1])
                for c in os.sched_getaffinity(0) if c != cpu and c in after and c in before}
        if room and max(room.values()) < 0.3:  # the C thread needs 30 points of room
            pytest.skip(f"no other CPU had room for the serving thread (idle share {room})")
    assert moved, f"the serving thread stayed on CPU {cpu} beside a process spinning there"
    assert stats.serve_cpu != cpu and not stats.serve_follows
    assert affinity == os.sched_getaffinity(0)  # moved, not pinned: the scheduler may move it again
    assert stats.lost_cycles <= 20, stats.table()


async def test_serve_cpu_none_leaves_the_thread_where_the_scheduler_puts_it(robot):
    async with Controller(robot, serve="kernel", serve_cpu=None) as controller:
        await controller.wait(0.6)
        with hog_on(max(os.sched_getaffinity(0))):
            await controller.wait(2.0)
        stats = controller.stats
    assert stats.serve == "kernel"
    assert stats.serve_moves == 0


async def test_serve_cpu_pins_the_serving_thread(robot):
    cpu = max(os.sched_getaffinity(0))
    async with Controller(robot, serve="kernel", serve_cpu=cpu) as controller:
        await controller.wait(0.3)
        affinity = serving_thread_affinity()
        stats = controller.stats
    assert affinity == {cpu}
    assert stats.serve_cpu == cpu and stats.serve_moves == 0
    assert stats.kernel_cycles >= 200


@contextlib.contextmanager
def simulator_on(robot, cpu: int):
    """Every thread of the embedded simulator's process kept to ``cpu`` (its states then come in there)."""
    pid = robot.simulator.pid
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    everywhere = os.sched_getaffinity(pid)
    try:
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid in os.listdir(f"/proc/{pid}/task"):  # threads started meanwhile too
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), everywhere)


def serving_thread_cpu() -> int:
    """The CPU the serving thread last ran on (/proc's processor field)."""
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if not f.read().startswith("aiofranka-resc"):
                continue
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    raise AssertionError("no serving thread (aiofranka-resc) in this process")


async def wait_for_cpu(controller, cpu: int, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if controller.stats.serve_cpu == cpu and serving_thread_cpu() == cpu:
            return True
        await asyncio.sleep(0.05)
    return False


def needs_the_simulators_process(robot):
    if robot.simulator is None or robot.simulator.pid is None:
        pytest.skip("needs the embedded simulator's process")


async def test_auto_serves_from_the_cpu_the_states_arrive_on(robot):
    needs_the_simulators_process(robot)
    first, second = sorted(os.sched_getaffinity(0))[:2]
    with simulator_on(robot, first):
        async with Controller(robot, serve="kernel") as controller:
            # Wherever it starts, it ends up on the CPU the states come in on.
            await controller.wait(0.3)
            with simulator_on(robot, second):
                on_second = await wait_for_cpu(controller, second, 3.0)
                moves = controller.stats.serve_moves
            on_first = await wait_for_cpu(controller, first, 3.0)
            affinity = serving_thread_affinity()
            stats = controller.stats
    assert on_second, f"the states came in on CPU {second}, the thread served from {stats.serve_cpu}"
    assert on_first, f"the states came in on CPU {first} again, the thread served from {stats.serve_cpu}"
    assert moves >= 1 and stats.serve_moves > moves and stats.serve_follows
    assert affinity == os.sched_getaffinity(0)  # moved, not pinned: the scheduler may still move it
    assert stats.lost_cycles <= 20, stats.table()


async def test_auto_falls_back_to_least_busy_when_the_states_arrive_where_it_may_not_run(robot):
    needs_the_simulators_process(robot)
    first, second = sorted(os.sched_getaffinity(0))[:2]
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {first})  # the serving thread, started from this thread, inherits it
    try:
        with simulator_on(robot, second):
            async with Controller(robot, serve="kernel") as controller:
                await controller.wait(0.5)
                stats = controller.stats
    finally:
        os.sched_setaffinity(0, everywhere)
    assert not stats.serve_follows
    assert stats.serve_cpu == first and stats.kernel_cycles >= 300
    assert stats.lost_cycles <= 20, stats.table()


async def test_auto_connects_libfrankas_socket_to_the_robot_and_later_sessions_run(robot):
    """Following the states connects libfranka's socket to its one sender, the robot, for good.

    Undoing it would release the socket's port (bound as port 0): a regression
    there shows as the later sessions timing out.
    """
    import socket

    def peer():
        sock = socket.socket(fileno=os.dup(robot.state_fd))
        try:
            return sock.getpeername()
        except OSError:
            return None
        finally:
            sock.close()

    async with Controller(robot, serve="kernel") as controller:
        await controller.wait(0.2)
        during = peer()
    assert during is not None  # SO_INCOMING_CPU is kept only for a connected socket
    for options in ({}, {"serve": "loop"}, {"serve_cpu": None}):
        async with Controller(robot, **options) as controller:
            await controller.wait(0.3)
            stats = controller.stats
        assert stats.cycles >= 200 and stats.lost_cycles <= 20, (options, stats.table())
    assert peer() == during


def test_the_serve_cpu_option_names_itself(robot):
    with pytest.raises(TypeError, match="serve_cpu must be 'auto', 'least-busy', None or a CPU number"):
        Controller(robot, serve_cpu="fast")
    with pytest.raises(TypeError, match="serve_cpu"):
        Controller(robot, serve_cpu=True)
    with pytest.raises(ValueError, match="serve_cpu must be one of the CPUs"):
        Controller(robot, serve_cpu=4096)
