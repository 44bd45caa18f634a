"""Ctrl+C during a session: the arm is ramped down and the script exits cleanly.

Each test starts a script in a process group of its own, waits until it reports
that its loop is running with a torque held, and sends SIGINT to the group, as
a terminal's Ctrl+C does. Then: the script exits soon and without a traceback,
its commanded torque faded to zero over ``stop_ramp`` (the script records it
and prints the record on the way out), and nothing is left behind: no
simulator, no server process, no shared-memory segment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _policies import gone_within

pytestmark = pytest.mark.sim

#: Below the simulated joints' dry friction (0.2 N m): the arm stays put, so
#: the command is the held torque alone, and its fade is exact.
HELD = [0.15, -0.15, 0.15, 0.1, 0.1, -0.1, 0.1]
STOP_RAMP = 0.3

IN_PROCESS = textwrap.dedent(f"""
    import asyncio, json

    import aiofranka
    from aiofranka import Controller, Robot, limits

    record = []
    figures = {{}}

    async def sample(controller):
        # The commanded torque after every cycle, until the session ends.
        try:
            while True:
                state = controller.state
                record.append((state.time_ms, state.tau_command.tolist()))
                await controller.wait(0.001)
        except (aiofranka.ControllerStoppedError, aiofranka.ControllerStateError):
            pass

    async def main():
        with Robot() as robot:
            figures["simulator"] = robot.simulator.pid
            controller = Controller(robot, stop_ramp={STOP_RAMP})
            try:
                async with controller:
                    await controller.move(limits.Q_HOME, speed=0.6)
                    controller.switch("torque")
                    controller.torque = {HELD}
                    await controller.wait(0.05)
                    asyncio.create_task(sample(controller))
                    await controller.wait(0.05)
                    print("running", flush=True)
                    await controller.wait(60.0)
            finally:  # Ctrl+C: leaving the block stopped the controller
                figures["running_after"] = controller.running
                figures["cycles"] = controller.stats.cycles

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print(json.dumps({{"record": record, **figures}}), flush=True)
""")

SERVER_MODE = textwrap.dedent(f"""
    import json, threading, time

    from aiofranka import FrankaRemoteController, limits
    from aiofranka.offload._proxy import link_of

    def sample(ctl, record):
        # The commanded torque of every published cycle, until the loop ends.
        last = -1
        try:
            while ctl.running:
                state = ctl.state
                if state.time_ms != last:
                    record.append((state.time_ms, state.tau_command.tolist()))
                    last = state.time_ms
                time.sleep(0.0002)
        except Exception:  # closed meanwhile
            pass

    if __name__ == "__main__":
        record, figures = [], {{}}
        try:
            with FrankaRemoteController(stop_ramp={STOP_RAMP}) as ctl:
                figures.update(server=ctl.pid, simulator=ctl.simulator_pid, frame=ctl._frame_name,
                               segments="afk" + link_of(ctl._proxy)._token)
                ctl.move(limits.Q_HOME, speed=0.6)
                ctl.switch("torque")
                ctl.torque = {HELD}
                ctl.wait(0.05)
                sampler = threading.Thread(target=sample, args=(ctl, record), daemon=True)
                sampler.start()
                ctl.wait(0.05)
                print("running", flush=True)
                ctl.wait(60.0)  # a long command in flight when Ctrl+C comes
        except KeyboardInterrupt:
            sampler.join(5.0)
            figures["running_after"] = ctl.running
            print(json.dumps({{"record": record, **figures}}), flush=True)
""")


def interrupt(script: str, tmp_path) -> tuple[dict, str, float]:
    """Run ``script``, Ctrl+C it once it runs; return its report, its stderr and how long it took to exit."""
    path = tmp_path / "script.py"
    path.write_text(script)
    with subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            line = process.stdout.readline()
            assert line.strip() == "running", line + process.stderr.read()
            time.sleep(0.5)  # the script is now inside its long wait (a command in flight, in server mode)
            t0 = time.monotonic()
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in a terminal does
            out, err = process.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 0, f"exit code {process.returncode}\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1]), err, took


def check_the_fade(record: list) -> None:
    """The commanded torque was held, then faded linearly to zero over STOP_RAMP s of served cycles."""
    times = np.array([t for t, _ in record], dtype=float)
    taus = np.array([tau for _, tau in record])
    held = np.array(HELD)
    assert len(record) >= 10, record
    np.testing.assert_array_equal(taus[0], held)
    np.testing.assert_array_equal(taus[-1], np.zeros(7))
    full = np.flatnonzero(np.all(taus == held, axis=1))[-1]
    zero = np.flatnonzero(~taus.any(axis=1))[0]
    fade = slice(full, zero + 1)
    story = f"{len(record)} samples, fade {times[full]:.0f}..{times[zero]:.0f} ms: " + ", ".join(
        f"{t:.0f}:{tau[0]:.3f}" for t, tau in zip(times[fade], taus[fade]))
    steps = np.abs(taus[full + 1:zero + 1]) - np.abs(taus[full:zero])
    assert np.all(steps <= 1e-12), story  # monotone towards zero
    # Never faster than the ramp (one cycle of slack: a snapshot's time may be a cycle newer than its torque).
    line = np.clip(1.0 - (times[fade] - times[full] + 1) / (1000.0 * STOP_RAMP), 0.0, 1.0)
    before_zero = slice(full, zero)  # the last step to zero is the duration's to check
    assert np.all(np.abs(taus[before_zero]) >= line[:-1, None] * np.abs(held) - 1e-9), story
    assert 1000 * STOP_RAMP - 2 <= times[zero] - times[full] <= 3000 * STOP_RAMP, story
    # Seen along the way, not only at its ends (a busy host may delay the
    # sampler, so not every cycle).
    assert zero - full >= 20, story


def check_no_traceback(err: str) -> None:
    # Nothing on stderr but the stall watchdog's reports (a busy host may
    # delay the event loop): no traceback, no "Task was destroyed", no
    # "Exception ignored", no resource tracker warning about a leaked segment.
    other = [line for line in err.splitlines() if line.strip() and not line.startswith("aiofranka: the event loop was blocked")]
    assert not other, err


def test_ctrl_c_in_process_ramps_down_and_exits_cleanly(tmp_path):
    report, err, took = interrupt(IN_PROCESS, tmp_path)
    check_no_traceback(err)
    check_the_fade(report["record"])
    assert report["running_after"] is False
    assert report["cycles"] > 100
    assert took < STOP_RAMP + 10.0, f"{took:.1f} s to exit"
    assert gone_within(report["simulator"], 10.0), "the simulator outlived the script"


def test_ctrl_c_in_server_mode_ramps_down_and_exits_cleanly(tmp_path):
    report, err, took = interrupt(SERVER_MODE, tmp_path)
    check_no_traceback(err)
    check_the_fade(report["record"])
    assert report["running_after"] is False
    assert took < STOP_RAMP + 10.0, f"{took:.1f} s to exit"
    assert gone_within(report["server"], 10.0), "the server process outlived the script"
    assert gone_within(report["simulator"], 10.0), "the simulator outlived the script"
    left = [name for name in os.listdir("/dev/shm")
            if name == report["frame"] or name.startswith(report["segments"])]
    assert not left, f"shared memory left behind: {left}"
