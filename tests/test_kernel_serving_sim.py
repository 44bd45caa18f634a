"""Kernel serving against franka-sim: the C thread serves every cycle, the event loop only publishes.

Real pylibfranka, the simulator's communication contract enforced (20 lost
commands in a row are a reflex). See docs/kernel-serving.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import aiofranka
from aiofranka import Controller
from aiofranka.loop.trajectory import TargetRows

from _policies import burn_python, context_switches, frozen_child

pytestmark = [pytest.mark.sim, pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                                reason="kernel serving needs the rescue thread: x86-64 Linux")]


async def test_the_kernel_serves_and_the_event_loop_sleeps(robot):
    async with Controller(robot, serve="kernel") as controller:
        await controller.wait(0.3)
        tid = threading.get_native_id()
        before, t0 = context_switches(tid), controller.time_ms
        await asyncio.sleep(1.0)
        woke = context_switches(tid) - before
        served = controller.time_ms - t0
        stats = controller.stats
    assert stats.serve == "kernel"
    assert stats.kernel_cycles >= stats.cycles - 1  # all but the first, which Python serves
    assert stats.guardian_cycles == 0 and stats.rescued_cycles == 0
    # Served from Python, the event loop wakes once per state (~1,000 a second).
    # a simulator at half speed still gives ~500; a stalled one gives none
    assert served >= 200, f"only {served} robot ms passed in a second of wall time"
    assert woke < served / 10, f"the event loop's thread switched {woke} times in {served} states"


async def test_a_blocked_or_busy_event_loop_does_not_hold_up_the_arm(robot):
    """150 ms blocks: far past the 20 lost commands of the reflex if nothing served meanwhile."""
    async with Controller(robot, serve="kernel") as controller:
        await controller.wait(0.2)
        lost0 = controller.stats.lost_cycles
        for _ in range(3):
            time.sleep(0.15)  # the event loop blocked, the GIL free
            await controller.wait(0.05)
            burn_python(0.15)  # the event loop running Python, holding the GIL
            await controller.wait(0.05)
        stats = controller.stats
    assert stats.guardian_cycles == 0 and stats.rescued_cycles == 0
    # Generous: this host stalls even C threads now and then; a design that
    # needed Python to serve would lose ~900 here (and end in a reflex).
    assert stats.lost_cycles - lost0 <= 40


async def test_targets_rows_and_moves_reach_the_arm(robot):
    async with Controller(robot, serve="kernel") as controller:
        await controller.wait(0.1)
        q0 = controller.state.q.copy()
        # A target: pushed whole to the kernel on assignment.
        target = q0.copy()
        target[0] += 0.05
        controller.q_desired = target
        await controller.wait(0.8)
        assert np.max(np.abs(controller.state.q - target)) < 0.01
        # Rows: indexed by robot time in the kernel (the recorder shows what it commanded).
        start = controller.time_ms + 20
        path = target + np.linspace(0.0, -0.1, 400)[:, None] * np.eye(7)[0]
        with controller.record(["time_ms", "q_desired", "server"], seconds=2.0) as recording:
            controller.play(TargetRows(start, positions=path))
            assert controller.playing
            np.testing.assert_allclose(controller.target_at(start + 399), path[-1])
            await controller.wait(0.7)
        rows = recording.data()
        t = rows["time_ms"]
        inside = (t >= start) & (t < start + 400)
        assert inside.sum() >= 350 and set(np.unique(rows["server"])) == {3}
        np.testing.assert_array_equal(rows["q_desired"][inside], path[t[inside] - start])
        np.testing.assert_array_equal(rows["q_desired"][t < start], np.broadcast_to(target, ((t < start).sum(), 7)))
        np.testing.assert_array_equal(rows["q_desired"][t >= start + 400][-1], path[-1])
        playback = controller.playback
        assert playback.late_switches == 0
        assert playback.held_cycles >= 50, playback  # past the last row it is held
        assert abs(controller.state.q[0] - path[-1][0]) < 0.01
        # A play whose start is already past switches late, at once.
        late = TargetRows(controller.time_ms - 5, positions=path[::-1].copy())
        controller.play(late)
        await controller.wait(0.05)
        assert controller.playback.late_switches == 1
        # Assigning the target the rows drive holds where they got to.
        controller.q_desired = controller.state.q
        assert not controller.playing
        held = controller.state.q.copy()
        await controller.wait(0.3)
        assert np.max(np.abs(controller.state.q - held)) < 0.01
        # move(): a ruckig trajectory played by the kernel from the next millisecond.
        await controller.move(q0, speed=0.5)
        assert np.max(np.abs(controller.state.q - q0)) < 0.01
        np.testing.assert_allclose(controller.q_desired, q0)
        # osc: pose targets.
        controller.switch("osc")
        pose = controller.state.ee.copy()
        pose[2, 3] += 0.02
        controller.ee_desired = pose
        await controller.wait(0.8)
        assert np.max(np.abs(controller.state.ee[:3, 3] - pose[:3, 3])) < 0.005
        stats = controller.stats
    assert stats.serve == "kernel" and stats.lost_cycles <= 25


async def test_stop_ramps_down_in_the_kernel(robot):
    """The C thread scales the command to zero over stop_ramp, then writes motion_finished."""
    held = np.array([0.15, -0.15, 0.15, 0.1, 0.1, -0.1, 0.1])  # below the joints' dry friction: the arm stays put
    async with Controller(robot, serve="kernel", stop_ramp=0.2) as controller:
        controller.switch("torque")
        controller.torque = held
        await controller.wait(0.1)
        recorder = controller.record(["time_ms", "tau_command", "server"], seconds=5.0)
        await controller.wait(0.1)
        t_stop = controller.time_ms
    rows = recorder.data()
    tau, t = rows["tau_command"], rows["time_ms"]
    assert set(np.unique(rows["server"])) == {3}  # kernel
    np.testing.assert_array_equal(tau[t <= t_stop][-1], held)
    np.testing.assert_array_equal(tau[-1], np.zeros(7))
    fading = (t > t_stop) & tau.any(axis=1)
    # Faded over the ramp's 200 cycles, not dropped: linearly, one step per cycle.
    assert 190 <= fading.sum() <= 201, fading.sum()
    scale = tau[fading, 0] / held[0]
    steps = np.diff(scale)
    np.testing.assert_allclose(steps, -1.0 / 200.0, atol=1e-9)


def test_a_reflex_met_by_the_kernel_is_raised_from_the_next_await():
    """The whole process frozen for 200 ms: the C thread meets the reflex and wakes the event loop."""
    ready, out = frozen_child("kernel")
    assert ready.split()[:2] == ["READY", "kernel"], ready
    assert out is not None, "the process hung after the reflex"
    assert "ENDED ReflexError" in out and "communication_constraints_violation" in out, out


async def test_the_serve_option(robot):
    with pytest.raises(ValueError, match="serve must be"):
        Controller(robot, serve="c")
    with pytest.raises(ValueError, match="serve='kernel' needs the rescue thread"):
        Controller(robot, serve="kernel", rescue=False)
    with pytest.raises(ValueError, match="on_stall='stop' needs serve='loop'"):
        Controller(robot, serve="kernel", on_stall="stop")
    # auto: the kernel where it can run, the loop otherwise.
    async with Controller(robot) as controller:
        await controller.wait(0.05)
        assert controller.stats.serve == "kernel"
        assert controller._guardian is None
    async with Controller(robot, rescue=False) as controller:
        await controller.wait(0.05)
        assert controller.stats.serve == "loop" and controller.stats.kernel_cycles == 0
    async with Controller(robot, on_stall="stop") as controller:
        await controller.wait(0.05)
        assert controller.stats.serve == "loop"


def _policy(tid: int = 0) -> tuple[int, int]:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(tid).sched_priority


def _serving_thread() -> int:
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().startswith("aiofranka-resc"):
                return int(tid)
    raise AssertionError("no serving thread (aiofranka-resc) in this process")


async def test_the_event_loop_thread_runs_normal_while_the_kernel_serves(robot):
    """The connecting thread is real-time (libfranka's promotion, lowered to
    rt_priority). With the C thread serving, Python on that thread (imports,
    dataset writing) would run above every normal thread, the simulator's
    included: a CI run saw the simulator starved into the communication reflex.
    For the session the loop thread runs SCHED_OTHER, the C thread stays
    above the robot's priority, and the policy comes back afterwards."""
    if robot.rt_priority is None:
        pytest.skip("the connecting thread is not real-time here (needs root)")
    before = _policy()
    assert before == (os.SCHED_FIFO, robot.rt_priority)
    async with Controller(robot, serve="kernel") as controller:
        await controller.wait(0.05)
        during, serving = _policy(), _policy(_serving_thread())
    assert during == (os.SCHED_OTHER, 0)
    assert serving == (os.SCHED_FIFO, robot.rt_priority + 2)
    assert _policy() == before
    async with Controller(robot, serve="loop") as controller:  # the loop serves: it stays real-time
        await controller.wait(0.05)
        assert _policy() == before


def test_the_c_thread_is_real_time_when_the_loop_runs_on_a_plain_thread(robot):
    """The C thread's priority followed the loop thread's: with the event loop on
    a thread other than the connecting one, it served every cycle at normal
    priority, where a CPU hog deschedules it. It runs two above the robot's."""
    if robot.rt_priority is None:
        pytest.skip("the connecting thread is not real-time here (needs root)")
    seen = {}

    def on_a_plain_thread():
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

        async def main():
            async with Controller(robot, serve="kernel") as controller:
                await controller.wait(0.05)
                seen["loop"], seen["serving"] = _policy(), _policy(_serving_thread())

        asyncio.run(main())

    thread = threading.Thread(target=on_a_plain_thread)
    thread.start()
    thread.join(30)
    assert seen["loop"] == (os.SCHED_OTHER, 0)
    assert seen["serving"] == (os.SCHED_FIFO, robot.rt_priority + 2)


def _cpu_latency_request() -> int:
    with open("/dev/cpu_dma_latency", "rb") as f:
        return int.from_bytes(f.read(4), sys.byteorder, signed=True)


async def test_idle_cpus_are_asked_to_wake_at_once_for_the_session(robot):
    """A halted idle vCPU here took up to 8 ms to take the wake-up for a state
    that had arrived (ftrace: the IPI handled 8 ms after the simulator's send),
    and the kernel thread, asleep in poll, lost the states in between. For the
    session a PM QoS request keeps idle CPUs polling; it ends with the session."""
    for bad in (-1e-6, 0.5, "0"):
        with pytest.raises(ValueError, match="cpu_wake_latency"):
            Controller(robot, cpu_wake_latency=bad)
    if not os.access("/dev/cpu_dma_latency", os.W_OK):
        pytest.skip("no PM QoS here (needs /dev/cpu_dma_latency, writable by root)")
    before = _cpu_latency_request()
    async with Controller(robot, serve="kernel") as first:
        await first.wait(0.05)
        assert _cpu_latency_request() == 0 and first.stats.cpu_wake_latency_us == 0
    assert _cpu_latency_request() == before
    async with Controller(robot, cpu_wake_latency=None) as controller:
        await controller.wait(0.05)
        assert _cpu_latency_request() == before and controller.stats.cpu_wake_latency_us is None
    async with Controller(robot, cpu_wake_latency=20e-6, serve="loop") as controller:
        await controller.wait(0.05)
        assert _cpu_latency_request() == 20 and controller.stats.cpu_wake_latency_us == 20
    assert _cpu_latency_request() == before


async def test_a_restart_serves_from_the_kernel_again(robot):
    controller = Controller(robot, serve="kernel")
    for _ in range(2):
        await controller.start()
        await controller.wait(0.2)
        assert controller.stats.serve == "kernel" and controller.stats.kernel_cycles >= 100
        await controller.stop()
    with pytest.raises(aiofranka.ControllerStateError):
        await controller.wait(0.1)


async def test_a_silent_robot_ends_the_session_with_the_lost_connection():
    """No state for 100 ms: the C thread reads anyway, libfranka's timeout names the lost connection,
    and the event loop raises it (the session does not wait forever with nothing served)."""
    from aiofranka import Robot

    with Robot() as robot:
        controller = Controller(robot, serve="kernel")
        await controller.start()
        await controller.wait(0.1)
        pid = robot.simulator.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(aiofranka.RobotConnectionError):
                await asyncio.wait_for(controller.wait(60.0), 30.0)
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not controller.running
        with pytest.raises(aiofranka.RobotConnectionError):
            await controller.stop()
    assert took < 20.0
