"""Control math on plain arrays (no robot)."""

import numpy as np
import pytest

from aiofranka import limits
from aiofranka.loop import laws as control

RNG = np.random.default_rng(1)


def rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_joint_impedance_formula():
    ws = control.Workspace()
    q, dq, qd, dqd = (RNG.normal(size=7) for _ in range(4))
    kp, kd = RNG.uniform(1, 100, 7), RNG.uniform(1, 10, 7)
    out = np.zeros(7)
    control.joint_impedance(q, dq, qd, dqd, kp, kd, ws, out)
    assert np.allclose(out, kp * (qd - q) + kd * (dqd - dq))


def test_rotation_error_is_sin_angle_times_axis():
    ws = control.Workspace()
    r = rot([1, 2, 3], 0.4)
    rd = rot([0, 0, 1], 0.3) @ r
    out = np.zeros(3)
    control.rotation_error(r, rd, ws, out)
    assert np.allclose(out, np.sin(0.3) * np.array([0, 0, 1.0]))


def _random_arm():
    jac = RNG.normal(size=(6, 7))
    a = RNG.normal(size=(7, 7))
    return jac, a @ a.T + 7 * np.eye(7)


def test_osc_at_rest_on_target_gives_zero_torque():
    ws = control.Workspace()
    jac, _ = _random_arm()
    pose = np.eye(4)
    out = np.ones(7)
    q = limits.Q_HOME.copy()
    control.osc(q, np.zeros(7), pose, jac, pose, np.full(6, 100.0), np.full(6, 20.0), q,
                np.full(7, 10.0), np.full(7, 1.0), ws, out)
    assert np.allclose(out, 0.0, atol=1e-12)


def test_osc_pushes_towards_the_target_and_is_bounded():
    ws = control.Workspace()
    jac, _ = _random_arm()
    q = limits.Q_HOME.copy()
    pose, target = np.eye(4), np.eye(4)
    target[:3, 3] = [0.01, -0.02, 0.005]
    out = np.zeros(7)
    kp = np.full(6, 100.0)
    control.osc(q, np.zeros(7), pose, jac, target, kp, np.zeros(6), q, np.zeros(7), np.zeros(7), ws, out)
    expected_force = kp * np.r_[target[:3, 3], 0, 0, 0]
    assert np.allclose(out, jac.T @ expected_force)
    # A far target is pulled no harder than one at max_translation (0.05 m) in the same direction.
    far = np.eye(4)
    far[:3, 3] = [1.0, 0, 0]
    near = np.eye(4)
    near[:3, 3] = [0.05, 0, 0]
    out_far, out_near = np.zeros(7), np.zeros(7)
    args = (kp, np.zeros(6), q, np.zeros(7), np.zeros(7), ws)
    control.osc(q, np.zeros(7), pose, jac, far, *args, out_far)
    control.osc(q, np.zeros(7), pose, jac, near, *args, out_near)
    assert np.allclose(out_far, out_near)


def test_osc_null_space_does_not_disturb_the_task():
    ws = control.Workspace()
    jac, _ = _random_arm()
    q = limits.Q_HOME.copy()
    q_null = q + 0.3
    out = np.zeros(7)
    pose = np.eye(4)
    control.osc(q, np.zeros(7), pose, jac, pose, np.zeros(6), np.zeros(6), q_null,
                np.full(7, 10.0), np.zeros(7), ws, out, damping=0.0)
    # The null torque lies in the null space of J^T's range: it produces no task force.
    assert np.allclose(np.linalg.lstsq(jac.T, out, rcond=None)[0], 0.0, atol=1e-9)
    assert np.linalg.norm(out) > 0.1


def test_joint_limit_guard_pushes_away_from_limits_only_inside_the_margin():
    q = limits.Q_HOME.copy()
    out = np.zeros(7)
    control.joint_limit_guard(q, np.zeros(7), limits.Q_MIN, limits.Q_MAX, 0.1, 100.0, 5.0, out)
    assert not out.any()
    q[0] = limits.Q_MIN[0] + 0.02  # 0.08 rad into the lower band
    q[1] = limits.Q_MAX[1] - 0.05  # 0.05 rad into the upper band
    dq = np.zeros(7)
    dq[0], dq[1] = -1.0, 1.0  # both moving further in
    control.joint_limit_guard(q, dq, limits.Q_MIN, limits.Q_MAX, 0.1, 100.0, 5.0, out)
    assert out[0] == pytest.approx(100.0 * 0.08 + 5.0)
    assert out[1] == pytest.approx(-(100.0 * 0.05 + 5.0))
    assert not out[2:].any()


def test_safety_filter_rate_limits_then_saturates():
    d, tau_max = np.full(7, 0.95), np.array(limits.TAU_MAX)
    last = np.zeros(7)
    out = np.zeros(7)
    desired = np.array([10.0, -10.0, 0.5, 0.0, 100.0, -100.0, 0.0])
    assert control.safety_filter(desired.copy(), last, d, tau_max, out)
    assert np.allclose(out, [0.95, -0.95, 0.5, 0.0, 0.95, -0.95, 0.0])
    last = np.array([86.5, 0, 0, 0, 11.9, 0, 0])
    assert control.safety_filter(np.array([100.0, 0, 0, 0, 100.0, 0, 0]), last, d, tau_max, out)
    assert out[0] == 87.0 and out[4] == 12.0


def test_safety_filter_turns_nan_into_a_step_towards_zero():
    d, tau_max = np.full(7, 0.95), np.array(limits.TAU_MAX)
    last = np.array([5.0, -5.0, 0.3, 0, 0, 0, 0])
    out = np.zeros(7)
    desired = np.full(7, np.nan)
    assert not control.safety_filter(desired, last, d, tau_max, out)
    assert np.allclose(out, [4.05, -4.05, 0.0, 0, 0, 0, 0])


def test_safety_filter_never_exceeds_the_rate_for_random_input():
    d, tau_max = np.full(7, 0.95), np.array(limits.TAU_MAX)
    last = np.zeros(7)
    out = np.zeros(7)
    for _ in range(2000):
        desired = RNG.normal(scale=200.0, size=7)
        control.safety_filter(desired, last, d, tau_max, out)
        assert np.all(np.abs(out - last) <= 0.95 + 1e-12)
        assert np.all(np.abs(out) <= tau_max)
        last[:] = out
