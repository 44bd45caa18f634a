"""The guardian keeps the arm fed while the event loop is stalled (simulator, contract enforced)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import aiofranka
from aiofranka import Controller, limits

from _policies import burn_python, context_switches

pytestmark = pytest.mark.sim

JOINT_TOL = 0.01  # rad, the tracking tolerance of docs/controller.md


@pytest.fixture
async def settled(robot):
    async with Controller(robot, serve="loop") as controller:
        await controller.move(limits.Q_HOME, speed=0.6)
        await controller.wait(0.5)
        yield controller


async def blocked_once_a_second(controller: Controller, block, seconds: float = 20.0) -> int:
    """Block the event loop once a second; return the cycles lost around the
    blocks (from just before each to 0.2 s of robot time after it)."""
    around = 0
    try:
        for _ in range(int(seconds)):
            before = controller.stats.lost_cycles
            block()
            await controller.wait(0.2)
            around += controller.stats.lost_cycles - before
            await controller.wait(0.8)
    except Exception:
        print(f"\n{controller.stats.table('guardian, failed')}\nlost around the blocks so far: {around}")
        raise
    return around


def check_stalls_were_covered(controller: Controller, stalls: int, lost_around: int) -> None:
    stats = controller.stats
    print(f"\n{stats.table('guardian')}\nlost around the {stalls} blocks: {lost_around}")
    # The guardian served cycles during the stalls (how many depends on how far
    # the simulator's own clock advanced meanwhile: a loaded machine slows it).
    assert stats.takeovers >= 1 and stats.guardian_cycles >= 1
    # Aim: 0 lost. A guardian that did not take over would lose ~30 per block
    # (or reflex); the host may also pause the whole process for tens of ms,
    # which no design survives losslessly, so allow 3 per block. Only the
    # windows around the blocks count: a CI host running the simulator at half
    # speed lost 129 cycles over the whole 41 s, mostly to its own pauses (1247
    # of the event loop's own wakeups were late, by up to 80 ms).
    assert lost_around <= 3 * stalls
    # A loop that lost cycles all along (not just to the host) would cross this.
    assert stats.lost_cycles <= 0.05 * stats.cycles
    # The coroutine is in charge the rest of the time (a guardian that never
    # handed back would serve nearly all cycles; that CI host's pauses made it
    # serve 18 %).
    assert stats.guardian_cycles < 0.5 * stats.cycles


@pytest.mark.slow
async def test_sleep_30ms_once_a_second_for_20_s(settled):
    lost_around = await blocked_once_a_second(settled, lambda: time.sleep(0.03))
    assert settled.running
    check_stalls_were_covered(settled, 20, lost_around)
    assert np.max(np.abs(settled.state.q - limits.Q_HOME)) < JOINT_TOL


@pytest.mark.slow
async def test_pure_python_30ms_once_a_second_for_20_s(settled):
    lost_around = await blocked_once_a_second(settled, lambda: burn_python(0.03))
    assert settled.running
    check_stalls_were_covered(settled, 20, lost_around)
    assert any("burn_python" in c.culprit for c in settled.stats.culprits)


async def test_a_two_second_sleep_is_covered_and_the_pose_holds(settled):
    before = settled.state.q
    lost_before = settled.stats.lost_cycles
    cycles_before, robot_ms_before = settled.stats.cycles, settled._buf.time_ms
    time.sleep(2.0)
    # Taken right after the stall, before the event loop ran again.
    during, robot_ms_during = settled.stats, settled._buf.time_ms
    await settled.wait(0.5)
    after = settled.stats
    # Every figure in each message: a failure here is a timing story.
    story = (f"robot ms {robot_ms_before}->{robot_ms_during}; cycles {cycles_before}->{during.cycles}->"
             f"{after.cycles}; lost {lost_before}->{during.lost_cycles}->{after.lost_cycles}; guardian cycles "
             f"{during.guardian_cycles}->{after.guardian_cycles}; takeovers {after.takeovers}, longest "
             f"{after.longest_takeover_ms:.0f} ms")
    assert np.max(np.abs(settled.state.q - before)) < JOINT_TOL, story
    # The guardian answered the states of the stall (the simulator may run
    # slower than 1 kHz on a loaded machine, so count its own milliseconds).
    assert robot_ms_during - robot_ms_before >= 500, story
    assert during.cycles - cycles_before >= 0.95 * (robot_ms_during - robot_ms_before), story
    assert after.longest_takeover_ms >= 1900, story
    # About 2000 cycles were served by the guardian; the hand-overs may cost a
    # few (2-4 seen on this 2-core VM under load). Without the guardian the
    # same sleep ends in a reflex.
    assert after.lost_cycles - lost_before <= 10, story
    # Handed back: the last 0.5 s were served by the coroutine.
    assert after.cycles - during.cycles >= 400, story
    # (A guardian that never handed back would serve all of them; host stalls
    # of up to 84 ms after the sleep were seen to need it for ~14 %.)
    assert after.guardian_cycles - during.guardian_cycles < 0.3 * (after.cycles - during.cycles), story


async def test_a_30ms_block_survives_by_default(settled):
    time.sleep(0.03)
    await settled.wait(0.3)
    assert settled.running
    assert settled.stats.takeovers >= 1


async def test_on_stall_stop_ramps_down_and_raises(robot):
    controller = Controller(robot, on_stall="stop", stall_limit=0.2)
    await controller.start()
    await controller.wait(0.2)
    time.sleep(1.0)
    with pytest.raises(aiofranka.EventLoopStallError) as info:
        await controller.wait(0.5)
    assert "test_on_stall_stop_ramps_down_and_raises" in info.value.culprit
    assert info.value.duration_ms >= 200
    assert not controller.running
    assert not controller._buf.tau_command.any()  # ramped to zero before the session ended
    with pytest.raises(aiofranka.EventLoopStallError):
        await controller.stop()


async def test_on_stall_silent_takes_over_without_logging(robot, caplog):
    caplog.set_level(logging.WARNING, logger="aiofranka")
    async with Controller(robot, serve="loop", on_stall="silent") as controller:
        time.sleep(0.03)
        await controller.wait(0.2)
        assert controller.stats.takeovers >= 1
    assert not [r for r in caplog.records if "blocked" in r.getMessage()]


async def test_targets_set_before_a_stall_are_tracked_during_it(settled):
    target = limits.Q_HOME.copy()
    target[0] += 0.15
    settled.q_desired = target
    # The event loop stays blocked for 0.5 s of robot time (the simulator may
    # run slower than real time); the guardian tracks the new target meanwhile.
    start_ms = settled._buf.time_ms
    deadline = time.monotonic() + 30.0
    while settled._buf.time_ms < start_ms + 500 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = settled.stats
    assert stats.takeovers >= 1
    assert np.max(np.abs(settled._buf.q - target)) < JOINT_TOL
    await settled.wait(0.2)


def test_bad_guardian_options():
    robot = object.__new__(aiofranka.Robot)  # options are checked before the robot is used
    robot.state_fd = None
    with pytest.raises(ValueError, match="on_stall must be"):
        Controller.__init__(object.__new__(Controller), robot, on_stall="panic")
    with pytest.raises(ValueError, match="stall_limit must be"):
        Controller.__init__(object.__new__(Controller), robot, stall_limit=0)
    with pytest.raises(ValueError, match="on_stall='stop' needs guardian=True"):
        Controller.__init__(object.__new__(Controller), robot, on_stall="stop", guardian=False)
    with pytest.raises(TypeError, match="rescue must be True, False or None"):
        Controller.__init__(object.__new__(Controller), robot, rescue="yes")


WIND_DOWN_LATE = textwrap.dedent("""
    import asyncio, time
    from aiofranka import Controller, Robot

    class SlowToWindDown(Controller):
        def _finish(self, error, first):
            if self._cycle.session_finished:
                time.sleep(0.05)  # the loop winds down late after motion_finished
            super()._finish(error, first)

    async def main():
        with Robot() as robot:
            for _ in range(3):
                controller = SlowToWindDown(robot)
                await controller.start()
                await controller.wait(0.2)
                await controller.stop()
                await controller.close()
        print("ok", flush=True)

    asyncio.run(main())
""")


def test_the_guardian_does_not_serve_a_session_that_has_ended():
    """Between the last write (motion_finished) and the loop winding down, the next
    cycle looks unclaimed. A guardian that took it over called readOnce on a
    session that sends no more states, which blocks with the GIL held: the whole
    process froze (first seen under load, in a test whose loop thread ran at normal
    priority). Run in a child so that a regression fails instead of hanging."""
    try:
        result = subprocess.run([sys.executable, "-c", WIND_DOWN_LATE], capture_output=True, text=True,
                                timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process froze after stop(): the guardian read from a finished session")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_a_loop_on_a_plain_thread_runs_real_time_for_the_session_and_the_guardian_above_it(robot):
    """A loop on a thread other than the one that connected would run at normal
    priority, where a CPU hog deschedules it while it holds the GIL and neither
    it nor the guardian can serve the robot (seen: a reflex within 0.1 s). For the
    session it takes the robot's real-time priority, the guardian one above;
    afterwards the thread is as it was."""
    if robot.rt_priority is None:
        pytest.skip("the connecting thread is not real-time here (needs root)")
    seen = {}

    def policy(tid=0):
        return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(tid).sched_priority

    def on_a_plain_thread():
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

        async def main():
            async with Controller(robot, serve="loop") as controller:
                await controller.wait(0.1)  # the guardian sets its priority as it starts
                seen["loop"] = policy()
                seen["guardian"] = policy(controller._guardian.native_id)
            seen["after"] = policy()

        asyncio.run(main())

    thread = threading.Thread(target=on_a_plain_thread)
    thread.start()
    thread.join(30)
    assert seen["loop"] == (os.SCHED_FIFO, robot.rt_priority)
    assert seen["guardian"] == (os.SCHED_FIFO, robot.rt_priority + 1)
    assert seen["after"] == (os.SCHED_OTHER, 0)


@pytest.mark.timing
async def test_an_idle_loop_leaves_the_guardian_asleep(robot):
    """While the event loop keeps its deadlines, the Python guardian sleeps: the
    kernel's watch thread wakes it only for a stall. A guardian that watched the
    deadlines itself woke about once per cycle (2,400-3,500 context switches per
    second here). A host slow enough for the loop itself to wake late has stalls
    (the loop's own late wakeups, seen: tens per second), each of which wakes the
    guardian and lets it serve a cycle or two: they are allowed for."""
    async with Controller(robot, serve="loop") as controller:
        await controller.wait(0.5)  # settled: the schedule has learned the period
        guardian = controller._guardian.native_id
        start, switches, stalls = time.monotonic(), context_switches(guardian), controller.stats.stalls
        await asyncio.sleep(2.0)
        seconds = time.monotonic() - start
        switches, stalls = context_switches(guardian) - switches, controller.stats.stalls - stalls
    assert switches < 100 * seconds + 20 * stalls, \
        f"{switches / seconds:.0f} switches/s of the guardian; {stalls / seconds:.1f} stalls/s"
