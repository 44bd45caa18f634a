"""Chunks executed at 1 kHz on the simulator: Controller.play, and the executor's rows across chunk switches."""

from __future__ import annotations

import numpy as np
import pytest

from aiofranka.loop.trajectory import TargetRows
from aiofranka.policy import Action, Command
from aiofranka.policy.chunks import ChunkScheduler
from aiofranka.policy.execution import ControllerExecutor, commanded_path

pytestmark = [pytest.mark.sim]

HZ = 30.0


async def test_played_rows_are_followed_then_held_and_counted(controller):
    q0 = controller.state.q
    start = controller.time_ms + 5
    path = q0 + np.linspace(0.0, 0.1, 400)[:, None] * np.eye(7)[0]
    controller.play(TargetRows(start, positions=path))
    assert controller.playing
    assert controller.target_at(start + 100) == pytest.approx(path[100])
    assert controller.target_at(start - 3) == pytest.approx(q0)  # before the start: the current target
    await controller.wait(0.9)
    figures = controller.playback
    assert figures.plays == 1 and figures.late_switches == 0
    assert 300 <= figures.held_cycles <= 520  # ~500 ms after the last row, held there
    assert abs(controller.state.q[0] - path[-1][0]) < 0.01
    controller.q_desired = path[-1]  # assigning the target ends the playback
    assert not controller.playing
    assert controller.mode == "impedance"


async def test_pose_rows_are_followed_in_osc_mode(controller):
    ee = controller.state.ee
    poses = np.repeat(ee[None], 300, axis=0)
    poses[:, 2, 3] += np.linspace(0.0, 0.03, 300)
    controller.play(TargetRows(controller.time_ms + 5, poses=poses))
    assert controller.mode == "osc"
    await controller.wait(0.6)
    assert abs(controller.state.ee[2, 3] - poses[-1][2, 3]) < 0.01
    controller.switch("impedance")
    assert not controller.playing


async def test_rows_are_checked_before_the_loop_sees_them(controller):
    q = controller.state.q
    with pytest.raises(ValueError, match="joint limits: row 1, joint 4"):
        bad = np.array([q, q])
        bad[1, 3] = 0.5
        controller.play(TargetRows(controller.time_ms + 5, positions=bad))
    with pytest.raises(ValueError, match="proper rotations"):
        pose = controller.state.ee.copy()
        pose[:3, :3] *= 1.1
        controller.play(TargetRows(controller.time_ms + 5, poses=[pose]))
    assert not controller.playing


def reference(q0: np.ndarray, step) -> np.ndarray:
    """The path a fake policy follows, as a function of the control step (vectorised over steps)."""
    step = np.asarray(step, dtype=float)
    q = np.broadcast_to(q0, step.shape + (7,)).copy()
    q[..., 0] += 0.15 * np.sin(2 * np.pi * 0.4 * step / HZ)
    q[..., 3] += 0.10 * np.sin(2 * np.pi * 0.3 * step / HZ)
    return q


async def test_chunks_switch_at_1khz_without_a_jump_and_on_the_current_step(controller):
    """A fake policy whose chunk holds the reference at the steps it is meant for, replying 4 ticks late.

    Every switch must start from the commanded target and continue on the
    reference at the current step: the commanded target equals the reference
    interpolated at the robot time (exactly), and moves at most one
    interpolation step per millisecond.
    """
    q0 = controller.state.q
    scheduler = ChunkScheduler(control_hz=HZ, steps_before_request=2, clock=lambda: controller.time_ms / 1000.0)
    executor = ControllerExecutor(controller)
    executor.bind(HZ, "linear")  # straight segments: the target is exactly the reference's linear interpolation
    executor.record = True
    latency_ticks, chunk_len = 4, 15
    pending = None
    for tick in range(110):
        scheduler.advance_to(executor.executed_steps())
        if pending is not None and tick >= pending[1]:
            request = pending[0]
            chunk = [Action({"arm": Command("joint_position", reference(q0, request.request_step + i))})
                     for i in range(chunk_len)]
            integration = scheduler.integrate(chunk)
            await executor.play_chunk(integration)
            pending = None
        if scheduler.should_request():
            pending = (scheduler.make_request(), tick + latency_ticks)
        await controller.wait(1.0 / HZ)
    assert controller.running
    figures = controller.playback
    assert figures.held_cycles == 0 and figures.late_switches == 0
    assert scheduler.integrated >= 10 and scheduler.rejected == 0 and scheduler.stale_steps_dropped > 0
    end = controller.time_ms
    executed = scheduler.advance_to(executor.executed_steps())
    controller.stop_playing()
    plays = executor.plays
    first = plays[0].start_ms
    targets = commanded_path(plays, first, end)
    # The step clock: the first chunk's waypoint 0 is reached one control period after its start.
    steps = (np.arange(first, end + 1) - first) / (1000.0 / HZ) - 1.0
    raw = reference(q0, np.arange(int(steps[-1]) + 2))
    clock = np.maximum(steps, 0.0)
    whole = np.floor(clock).astype(int)
    expected = raw[whole] + (clock - whole)[:, None] * (raw[whole + 1] - raw[whole])  # linear between raw steps
    ramp_in = steps < 0  # from the held pose to the first waypoint
    assert np.abs(targets[~ramp_in] - expected[~ramp_in]).max() < 1e-9
    jumps = np.abs(np.diff(targets, axis=0)).max(axis=0)
    one_step = np.abs(np.diff(raw, axis=0)).max(axis=0) / (1000.0 / HZ)
    assert np.all(jumps <= one_step * 1.0001 + 1e-12)
    assert executed == np.floor(steps[-1] + 1e-6) + 1  # the scheduler's step count is the robot clock's
