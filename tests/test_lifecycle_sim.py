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

    controller = Controller(robot)
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
