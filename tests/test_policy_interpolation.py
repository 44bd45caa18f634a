"""Policy-rate waypoints to 1 kHz rows: continuous at raw steps and at chunk switches, poses on SE(3)."""

from __future__ import annotations

import numpy as np
import pytest

from aiofranka.policy import _se3
from aiofranka.policy.interpolation import joint_rows, pose_rows, row_positions

PERIOD_MS = 1000.0 / 30.0


def test_rows_run_from_the_start_position_to_the_last_waypoint():
    x = row_positions(5, -1.0, PERIOD_MS)
    assert x[0] == -1.0 and x[-1] == 4.0
    assert np.allclose(np.diff(x)[:-1], 1.0 / PERIOD_MS)
    assert len(x) == int(np.ceil(5 * PERIOD_MS)) + 1
    assert list(row_positions(5, 4.0, PERIOD_MS)) == [4.0]


def test_linear_rows_pass_every_waypoint_and_move_one_interpolation_step_per_ms():
    waypoints = np.arange(1, 6, dtype=float)[:, None] * np.ones(7)  # step j at value j + 1
    rows, velocities = joint_rows(np.zeros(7), waypoints, -1.0, np.zeros(7), PERIOD_MS, mode="linear")
    assert rows[0] == pytest.approx(np.zeros(7)) and rows[-1] == pytest.approx(waypoints[-1])
    steps = np.abs(np.diff(rows[:, 0]))
    assert steps.max() == pytest.approx(1.0 / PERIOD_MS)  # one waypoint difference spread over a step
    x = row_positions(5, -1.0, PERIOD_MS)
    assert rows[:, 0] == pytest.approx(x + 1.0)  # linear through every waypoint
    assert not velocities.any()  # a piecewise-constant velocity is not fed forward


def test_a_linear_switch_starts_at_the_commanded_target_and_fades_the_difference_over_one_step():
    waypoints = np.full((4, 7), 1.0)
    current = np.full(7, 0.6)  # the loop commands 0.6 where the new chunk's own path is at 1.0
    rows, _ = joint_rows(np.full(7, 1.0), waypoints, -0.5, current, PERIOD_MS, mode="linear")
    assert rows[0] == pytest.approx(current)  # no jump at the switch
    one_step = int(round(PERIOD_MS))
    assert rows[one_step + 1] == pytest.approx(np.full(7, 1.0))  # the chunk's own path after one step
    assert np.abs(np.diff(rows[:, 0])).max() == pytest.approx(0.4 / PERIOD_MS, rel=1e-6)


def test_cubic_rows_pass_every_waypoint_with_a_continuous_velocity():
    period_ms = 25.0  # 40 Hz: waypoint j falls on row 25 (j + 1)
    rng = np.random.default_rng(1)
    waypoints = np.cumsum(rng.normal(0.0, 0.01, size=(8, 7)), axis=0)  # a jittery policy
    previous, current, velocity = np.zeros(7), np.full(7, 0.003), np.full(7, -0.2)
    rows, velocities = joint_rows(previous, waypoints, -1.0, current, period_ms, current_velocity=velocity)
    assert rows[0] == pytest.approx(current) and velocities[0] == pytest.approx(velocity)  # C1 at the switch
    for j in range(1, 8):  # after the join (1.5 steps), exactly through every waypoint
        assert rows[25 * (j + 1)] == pytest.approx(waypoints[j])
    assert rows[-1] == pytest.approx(waypoints[-1]) and not velocities[-1].any()
    # The fed-forward velocity is the rows' own, and it has no steps.
    assert velocities[:-2] == pytest.approx(np.gradient(rows, axis=0)[:-2] * 1000.0, abs=0.05)
    # A straight-segment path's velocity steps at every waypoint by the change of slope; the cubic's
    # velocity changes by a small fraction of that from one millisecond to the next.
    kick = np.abs(np.diff(np.diff(waypoints, axis=0), axis=0)).max() * 1000.0 / period_ms
    dv = np.abs(np.diff(velocities[:-1], axis=0))
    assert dv.max() < 0.5 * kick and dv[40:].max() < 0.1 * kick
    linear, _ = joint_rows(previous, waypoints, -1.0, current, period_ms, mode="linear")
    kink = np.abs(np.diff(linear[:-1], 2, axis=0)).max()
    assert np.abs(np.diff(rows[:-1], 2, axis=0)).max() < kink  # smoother than straight segments
    with pytest.raises(ValueError, match="mode"):
        joint_rows(previous, waypoints, -1.0, current, period_ms, mode="spline")


def test_held_rows_step_at_each_waypoint():
    waypoints = np.arange(1, 4, dtype=float)[:, None] * np.ones(7)
    rows, velocities = joint_rows(np.zeros(7), waypoints, -1.0, np.zeros(7), 10.0, mode="hold")
    assert list(rows[:, 0]) == [0.0] * 10 + [1.0] * 10 + [2.0] * 10 + [3.0]
    assert not velocities.any()


def test_pose_rows_are_proper_continuous_and_reach_the_waypoints():
    def pose(angle, x):
        p = np.eye(4)
        p[:3, :3] = _se3.exp_so3(np.array([0.0, 0.0, angle]))
        p[:3, 3] = [x, 0.0, 0.5]
        return p

    waypoints = np.array([pose(0.1 * (j + 1), 0.01 * (j + 1)) for j in range(4)])
    rows = pose_rows(pose(0.0, 0.0), waypoints, -1.0, pose(0.0, 0.0), PERIOD_MS)
    rotations = rows[:, :3, :3]
    assert np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max() < 1e-12
    assert rows[-1] == pytest.approx(waypoints[-1])
    angles = np.array([_se3.log_so3(r)[2] for r in rotations])
    assert np.abs(np.diff(angles)).max() == pytest.approx(0.1 / PERIOD_MS, rel=1e-6)
    assert np.abs(np.diff(rows[:, 0, 3])).max() == pytest.approx(0.01 / PERIOD_MS, rel=1e-6)
    # A switch from another pose fades the rotation difference too.
    rows = pose_rows(pose(0.0, 0.0), waypoints, -1.0, pose(-0.2, 0.0), PERIOD_MS)
    assert rows[0] == pytest.approx(pose(-0.2, 0.0))
    assert rows[-1] == pytest.approx(waypoints[-1])


def test_log_and_exp_are_inverse_up_to_pi():
    rng = np.random.default_rng(3)
    for _ in range(50):
        v = rng.normal(size=3)
        v *= rng.uniform(0.0, np.pi - 1e-3) / np.linalg.norm(v)
        assert _se3.log_so3(_se3.exp_so3(v)) == pytest.approx(v, abs=1e-9)
    near_pi = np.array([0.0, np.pi - 1e-6, 0.0])
    assert _se3.log_so3(_se3.exp_so3(near_pi)) == pytest.approx(near_pi, abs=1e-5)


@pytest.mark.parametrize("mode", ["cubic", "linear"])
def test_a_large_difference_joins_at_the_join_speed_not_in_one_step(mode):
    waypoints = np.full((30, 7), 0.2)  # the policy moved on by 0.2 rad while the arm held
    rows, _ = joint_rows(np.full(7, 0.2), waypoints, -1.0, np.zeros(7), PERIOD_MS, mode=mode, join_speed=0.5)
    assert rows[0] == pytest.approx(np.zeros(7)) and rows[-1] == pytest.approx(waypoints[-1])
    fastest = np.abs(np.diff(rows[:, 0])).max() * 1000.0  # rad/s
    assert fastest <= 0.5 * (1.5 if mode == "cubic" else 1.0) + 1e-9  # a Hermite blend peaks at 1.5x its mean
    assert fastest >= 0.5 * 0.9  # and the join does not dawdle either
    one_step, _ = joint_rows(np.full(7, 0.2), waypoints, -1.0, np.zeros(7), PERIOD_MS, mode=mode)
    assert np.abs(np.diff(one_step[:, 0])).max() * 1000.0 > 5.0  # without it: 0.2 rad within 33 ms


def test_a_large_pose_difference_joins_at_the_join_speed():
    far = np.eye(4)
    far[:3, :3] = _se3.exp_so3(np.array([0.0, 0.0, 0.3]))
    far[:3, 3] = [0.05, 0.0, 0.0]
    waypoints = np.repeat(np.eye(4)[None], 40, axis=0)
    rows = pose_rows(np.eye(4), waypoints, -1.0, far, PERIOD_MS, join_speed=(0.1, 0.5))
    assert rows[0] == pytest.approx(far) and rows[-1] == pytest.approx(np.eye(4))
    assert np.abs(np.diff(rows[:, 0, 3])).max() * 1000.0 <= 0.1 + 1e-9  # m/s
    angles = np.array([_se3.log_so3(r)[2] for r in rows[:, :3, :3]])
    assert np.abs(np.diff(angles)).max() * 1000.0 <= 0.5 + 1e-9  # rad/s


def test_a_cubic_switch_moves_no_faster_than_one_interpolation_step():
    waypoints = np.full((6, 7), 1.0)
    current = np.full(7, 0.6)
    rows, velocities = joint_rows(np.full(7, 1.0), waypoints, -0.5, current, PERIOD_MS)
    assert rows[0] == pytest.approx(current) and velocities[0] == pytest.approx(np.zeros(7))
    assert np.abs(np.diff(rows[:, 0])).max() <= 0.4 / PERIOD_MS * (1 + 1e-3)  # the 0.4 rad step, over one step
    assert rows[-1] == pytest.approx(waypoints[-1])


@pytest.mark.parametrize("mode", ["cubic", "linear"])
def test_a_switch_onto_a_moving_path_stays_within_the_interpolation_step(mode):
    """The loop commands a target behind a path that moves at 0.6 per step, and the chunk's last raw
    step is 1.0: joining the offset on top of the path's own speed must not move the target faster
    than that largest step (with a fixed 1.5-step join, 0.6 + 0.5 per step: 1.1). Checked over the
    join and the path after it, up to the last segment (where a cubic through a lone faster step
    runs up to 10 % over it: a C1 curve has to, see docs/policies.md)."""
    waypoints = np.cumsum(np.r_[np.full(7, 0.6), 1.0])[:, None] * np.ones(7)
    previous = np.zeros(7)
    step = 1.0  # the largest difference between consecutive waypoints (and larger than the offset)
    for current, where in ((-0.5, "behind"), (0.5, "ahead")):
        rows, _ = joint_rows(previous, waypoints, -1.0, np.full(7, current), PERIOD_MS, mode=mode)
        assert rows[0] == pytest.approx(np.full(7, current)) and rows[-1] == pytest.approx(waypoints[-1])
        early = rows[: int(6 * PERIOD_MS), 0]  # the rows up to x = 5
        assert np.abs(np.diff(early)).max() <= step / PERIOD_MS * (1 + 1e-3), where
