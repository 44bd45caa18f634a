"""The C kernel agrees with the reference laws in aiofranka.control; its watch thread reports unclaimed cycles."""

import os
import select
import time
import types

import numpy as np
import pytest

from aiofranka import _kernel, limits
from aiofranka.loop import laws as control
from aiofranka.robot import StateBuffer

RNG = np.random.default_rng(3)


def random_q():
    return RNG.uniform(limits.Q_MIN + 0.2, limits.Q_MAX - 0.2)


def frozen(values):
    array = np.array(values, dtype=float)
    array.flags.writeable = False
    return array


def state_lists(q, dq):
    pose = np.array(_kernel._test_flange_pose(q.tolist()))
    return q.tolist(), dq.tolist(), pose.tolist()


def test_flange_pose_matches_the_known_home_geometry():
    q = [0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785]
    pose = np.array(_kernel._test_flange_pose(q)).reshape(4, 4).T
    # At this pose the flange sits 0.5544 m ahead and 0.6248 m up, z axis down.
    assert pose[:3, 3] == pytest.approx([0.5544, 0.0, 0.6248], abs=2e-4)
    assert pose[:3, 2] == pytest.approx([0.0, 0.0, -1.0], abs=1e-3)


def test_jacobian_matches_finite_differences_of_the_kinematics():
    for _ in range(20):
        q = random_q()
        pose = np.array(_kernel._test_flange_pose(q.tolist())).reshape(4, 4).T
        jac = np.array(_kernel._test_jacobian_at(q.tolist(), pose[:3, 3].tolist())).reshape(7, 6).T
        h = 1e-6
        for j in range(7):
            dq = np.zeros(7)
            dq[j] = h
            moved = np.array(_kernel._test_flange_pose((q + dq).tolist())).reshape(4, 4).T
            assert np.allclose((moved[:3, 3] - pose[:3, 3]) / h, jac[:3, j], atol=1e-5)
            # Angular part: rotation axis of the small rotation moved @ pose^T.
            skew = (moved[:3, :3] @ pose[:3, :3].T - np.eye(3)) / h
            omega = [skew[2, 1], skew[0, 2], skew[1, 0]]
            assert np.allclose(omega, jac[3:, j], atol=1e-5)


def test_impedance_guard_and_safety_match_the_reference():
    buf = StateBuffer()
    ws = control.Workspace()
    for _ in range(200):
        q, dq = random_q(), RNG.normal(size=7)
        q[RNG.integers(7)] = limits.Q_MIN[0] + 0.05 if RNG.random() < 0.5 else q[0]
        q = np.clip(q, limits.Q_MIN, limits.Q_MAX)
        buf.kernel.fill(*state_lists(q, dq))
        qd, dqd = frozen(random_q()), frozen(RNG.normal(size=7))
        kp, kd = frozen(RNG.uniform(0, 600, 7)), frozen(RNG.uniform(0, 50, 7))
        buf.tau_last[:] = RNG.normal(scale=5.0, size=7)
        scale = float(RNG.uniform(0, 1))
        buf.kernel._test_impedance(qd, dqd, kp, kd)
        command = buf.kernel.finish(scale)

        expected = np.zeros(7)
        control.joint_impedance(q, dq, qd, dqd, kp, kd, ws, expected)
        expected *= scale
        control.joint_limit_guard(q, dq, limits.Q_MIN, limits.Q_MAX, 0.1, 100.0, 5.0, expected)
        filtered = np.zeros(7)
        assert control.safety_filter(expected, buf.tau_last.copy(), buf.dtau_max, buf.tau_max, filtered)
        assert np.allclose(command, filtered, atol=1e-9)
        assert np.allclose(buf.tau_command, filtered, atol=1e-9)


def test_osc_matches_the_reference():
    buf = StateBuffer()
    ws = control.Workspace()
    for _ in range(100):
        q, dq = random_q(), RNG.normal(scale=0.3, size=7)
        buf.kernel.fill(*state_lists(q, dq))
        target = buf.ee.copy()
        target[:3, 3] += RNG.normal(scale=0.05, size=3)
        angle = RNG.uniform(-0.5, 0.5)
        c, s = np.cos(angle), np.sin(angle)
        target[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ target[:3, :3]
        args = [frozen(target), frozen(RNG.uniform(0, 2000, 6)), frozen(RNG.uniform(0, 80, 6)),
                frozen(random_q()), frozen(RNG.uniform(0, 20, 7)), frozen(RNG.uniform(0, 3, 7))]
        buf.kernel._test_osc(*args)
        expected = np.zeros(7)
        control.osc(q, dq, buf.ee, buf.jacobian, *args, ws, expected)
        assert np.allclose(buf.tau_desired, expected, atol=1e-7)


def test_non_finite_law_output_steps_towards_zero_and_reports_none():
    buf = StateBuffer()
    buf.kernel.fill(*state_lists(limits.Q_HOME.copy(), np.zeros(7)))
    buf.tau_last[:] = [5.0, -5.0, 0.5, 0, 0, 0, 0]
    buf.kernel._test_torque(frozen([np.nan] * 7))
    assert buf.kernel.finish(1.0) is None
    assert np.allclose(buf.tau_command, [4.05, -4.05, 0.0, 0, 0, 0, 0])


def test_wrong_buffers_are_type_errors():
    buf = StateBuffer()
    with pytest.raises(TypeError, match="kp must be a contiguous float64 array of 7 values"):
        buf.kernel._test_impedance(frozen(np.zeros(7)), frozen(np.zeros(7)), frozen(np.zeros(6)), frozen(np.zeros(7)))
    with pytest.raises(TypeError, match="q must be a writable contiguous float64 array"):
        _kernel.Kernel(*([np.zeros(6)] + [np.zeros(7)] * 11))


class _Time:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def to_sec(self) -> float:
        return self.ms / 1000.0


class _State:
    def __init__(self, ms: int) -> None:
        self.q = limits.Q_HOME.tolist()
        self.dq = [0.0] * 7
        self.O_T_EE = np.eye(4).ravel().tolist()
        self.time = _Time(ms)
        self.control_command_success_rate = 1.0


class _Control:
    """Stands in for pylibfranka's control object: the robot clock is the wall clock (ms)."""

    def __init__(self, read_delay: float = 0.0) -> None:
        self.start = time.monotonic_ns()
        self.read_delay = read_delay

    def readOnce(self):
        time.sleep(self.read_delay)
        return _State((time.monotonic_ns() - self.start) // 1_000_000), None

    def writeOnce(self, command) -> None:
        pass


def _torques(values):
    return types.SimpleNamespace(tau_J=values, motion_finished=False)


THRESHOLD_NS = 50_000_000  # far above a Python thread's late wakeups when cycling every millisecond


@pytest.fixture
def watched():
    """A kernel whose watch thread reports to an eventfd (the deadline alone, as with wait="timerfd")."""
    kernel = StateBuffer().kernel
    kernel.new_session()
    wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    kernel.watch_start(THRESHOLD_NS, -1, wake, 0)
    yield kernel, wake
    kernel.watch_stop()
    os.close(wake)


def _cycles(kernel, ctl, n: int, *, finish: bool = False, torque: float = 0.0) -> None:
    for _ in range(n):
        kernel.cycle(ctl, _torques, 2, 1.0, finish, frozen([torque] * 7))
        time.sleep(0.001)


@pytest.mark.timing
def test_the_watch_sleeps_while_cycles_come_and_reports_the_first_that_does_not(watched):
    kernel, wake = watched
    _cycles(kernel, _Control(), 100, torque=1.0)
    assert kernel.watch_counters() == (0, 0)  # each cycle pushed the timer on: it never fired
    epoch, due = kernel.due()
    assert kernel.claimed_epoch == epoch - 1  # published, not yet claimed
    assert select.select([wake], [], [], 5.0)[0], "the unclaimed cycle was not reported"
    reported = time.monotonic_ns()
    assert os.eventfd_read(wake) == 1
    assert kernel.stalled_epoch == epoch
    assert reported >= due + THRESHOLD_NS
    time.sleep(0.1)
    assert kernel.watch_counters() == (1, 1)  # once: nothing re-armed the timer since


@pytest.mark.timing
def test_the_watch_leaves_a_claimed_cycle_and_a_finished_session_alone(watched):
    kernel, wake = watched
    ctl = _Control()
    _cycles(kernel, ctl, 20)
    # Claimed, then slow inside the cycle (readOnce waits 0.2 s): not a stall.
    ctl.read_delay = 0.2
    _cycles(kernel, ctl, 1)
    fires, reports = kernel.watch_counters()
    assert fires >= 1 and reports == 0
    # The last cycle writes motion_finished (zero torque): nothing is due after it.
    ctl.read_delay = 0.0
    _cycles(kernel, ctl, 1, finish=True)
    time.sleep(0.1)
    assert kernel.watch_counters()[1] == 0
    assert not select.select([wake], [], [], 0)[0]


@pytest.mark.timing
def test_with_a_state_socket_a_late_state_is_not_a_stall_and_one_left_waiting_is():
    """wait="socket": the watch reports only once a state has waited, unclaimed,
    a threshold (a pipe stands in for libfranka's state socket)."""
    kernel = StateBuffer().kernel
    kernel.new_session()
    wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    state_r, state_w = os.pipe()
    kernel.watch_start(THRESHOLD_NS, state_r, wake, 0)
    try:
        _cycles(kernel, _Control(), 20)
        epoch, due = kernel.due()
        time.sleep(0.15)  # the deadline passes, no state comes: late, not stalled
        fires, reports = kernel.watch_counters()
        assert fires == 1 and reports == 0
        arrived = time.monotonic_ns()
        os.write(state_w, b"s")  # a state comes and nobody claims it
        assert select.select([wake], [], [], 5.0)[0], "the state left waiting was not reported"
        assert time.monotonic_ns() >= arrived + THRESHOLD_NS
        assert kernel.stalled_epoch == epoch and kernel.watch_counters()[1] == 1
    finally:
        kernel.watch_stop()
        for fd in (wake, state_r, state_w):
            os.close(fd)
