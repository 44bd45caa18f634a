"""No orphan simulator, whatever happens to the process that started it; other event loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aiofranka

from _policies import gone_within

pytestmark = pytest.mark.sim

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from aiofranka import Controller, Robot

    async def main():
        with Robot() as robot:
            async with Controller(robot) as controller:
                print(robot.simulator.pid, flush=True)
                await controller.wait(60.0)

    asyncio.run(main())
""")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_simulator_does_not_outlive_its_parent(how):
    with subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as parent:
        try:
            line = parent.stdout.readline()
            assert line.strip().isdigit(), parent.stderr.read()
            sim_pid = int(line)
            os.kill(parent.pid, getattr(signal, how))
            parent.wait(10)
            assert gone_within(sim_pid, 10.0), f"simulator {sim_pid} outlived its parent ({how})"
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()


def test_controller_runs_on_uvloop(robot):
    uvloop = pytest.importorskip("uvloop")
    from aiofranka import Controller, limits

    async def main():
        async with Controller(robot) as controller:
            await controller.move(limits.Q_HOME, speed=0.6)
            await controller.wait(0.5)
            return controller.stats, controller.state

    stats, state = uvloop.run(main())
    assert stats.cycles > 500
    assert np.max(np.abs(state.q - limits.Q_HOME)) < 0.01


async def test_an_exception_in_the_law_ramps_down_and_is_raised_from_the_next_await(robot):
    from aiofranka import Controller

    controller = Controller(robot, serve="loop")
    await controller.start()
    controller.switch("torque")
    controller.torque = [3.0, 0, 0, 0, 0, 0, 0]
    await controller.wait(0.1)
    assert controller.state.tau_command[0] == pytest.approx(3.0)

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("law bug")

    controller._cycle.law_params = broken  # fault injection
    with pytest.raises(aiofranka.ControlLawError, match="ZeroDivisionError") as info:
        await controller.wait(1.0)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert not controller.running
    # The session ended with the torque ramped to zero at the rate limit.
    assert not controller._buf.tau_command.any()
    with pytest.raises(aiofranka.ControlLawError):
        await controller.stop()


# -- descriptors ------------------------------------------------------------------

def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_each_session_releases_its_descriptors_when_it_ends(robot):
    from aiofranka import Controller

    async with Controller(robot) as controller:  # whatever is made once per process
        await controller.wait(0.01)
    before = _open_fds()
    for _ in range(10):
        async with Controller(robot) as controller:
            await controller.wait(0.01)
    assert _open_fds() == before
    # And a session that ends in an error.
    controller = Controller(robot, serve="loop")
    await controller.start()
    controller._cycle.law_params = None  # fault injection: the next cycle raises
    with pytest.raises(aiofranka.ControlLawError):
        await controller.wait(1.0)
    assert _open_fds() == before


# -- Robot.close() under a running controller ----------------------------------------

def test_closing_the_robot_from_another_thread_ramps_the_controller_down_first():
    import asyncio
    import threading

    from aiofranka import Controller

    robot = aiofranka.Robot()
    sim_pid = robot.simulator.pid
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-controller-loop")
    thread.start()
    try:
        controller = Controller(robot, stop_ramp=0.5)
        asyncio.run_coroutine_threadsafe(controller.start(), loop).result(30)
        asyncio.run_coroutine_threadsafe(controller.wait(0.2), loop).result(10)
        before = controller.stats.robot_time_s
        robot.close()
        # The session ended before close() returned, after the whole ramp, with no error...
        assert not controller.running
        assert controller.error is None
        assert round(1000 * (controller.stats.robot_time_s - before)) >= 500  # stop_ramp: 500 cycles
        assert robot.closed
        assert gone_within(sim_pid, 10.0)
        # ...and stop() has nothing left to raise.
        asyncio.run_coroutine_threadsafe(controller.stop(), loop).result(10)
    finally:
        if not robot.closed:
            if controller.running:
                asyncio.run_coroutine_threadsafe(controller.stop(), loop).result(10)
            robot.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_closing_the_robot_on_the_controllers_own_loop_is_refused_and_changes_nothing():
    from aiofranka import Controller

    robot = aiofranka.Robot()
    try:
        controller = Controller(robot)
        await controller.start()
        with pytest.raises(aiofranka.ControllerStateError, match=r"await controller\.stop\(\) first"):
            robot.close()
        assert not robot.closed and robot.simulator.running
        await controller.wait(0.2)  # still serving
        assert controller.running
        await controller.stop()
    finally:
        robot.close()
    assert robot.closed


async def test_leaving_a_robot_block_on_an_exception_keeps_that_exception():
    from aiofranka import Controller

    with pytest.raises(KeyError, match="body") as info:
        with aiofranka.Robot() as robot:
            controller = Controller(robot)
            await controller.start()
            raise KeyError("body")
    assert any("the robot was left open" in note for note in info.value.__notes__)
    assert controller.running
    await controller.stop()
    robot.close()
    assert robot.closed and not robot.simulator.running


async def test_the_usual_nesting_closes_cleanly():
    from aiofranka import Controller

    with aiofranka.Robot() as robot:
        async with Controller(robot) as controller:
            await controller.wait(0.1)
    assert robot.closed and not controller.running and controller.error is None
