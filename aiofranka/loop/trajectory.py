"""Targets computed ahead of the 1 kHz loop: ruckig joint trajectories for ``move()``, and target rows.

The loop must not plan or allocate, so :func:`plan_joint_motion` computes the
whole time-optimal trajectory with ruckig when ``move()`` is called and
:func:`sample` writes positions and velocities for every millisecond into
preallocated arrays, yielding to the event loop between chunks.
:class:`TargetRows` is the same idea for targets computed elsewhere (a
policy's chunk, interpolated by aiofranka.policy): one row per robot
millisecond from a start time, which ``Controller.play`` hands to the cycle.
"""

from __future__ import annotations

import asyncio

import numpy as np

from .. import limits
from ..exceptions import ControllerStoppedError, MissingDependencyError, MotionTimeoutError

try:  # imported here, not in move(): a first import inside the loop stalls it for milliseconds
    from ruckig import InputParameter, Result, Ruckig, Trajectory
except ImportError:  # pragma: no cover - ruckig is a core dependency
    Ruckig = None

__all__ = ["JointTrajectory", "TargetRows", "plan_joint_motion"]


class JointTrajectory:
    """A planned motion: ``positions`` and ``velocities`` of shape (n, 7), one row per ms."""

    def __init__(self, trajectory, n: int, target: np.ndarray) -> None:
        self._trajectory = trajectory
        self.duration = float(trajectory.duration)
        self.n = n
        self.target = target
        self.final = target.copy()
        self.final.flags.writeable = False
        self.positions = np.empty((n, 7))
        self.velocities = np.empty((n, 7))
        self.position_rows: list[np.ndarray] = []
        self.velocity_rows: list[np.ndarray] = []

    async def sample(self, chunk: int = 20) -> None:
        """Fill the sample arrays, giving the event loop a turn every ``chunk`` rows."""
        at_time = self._trajectory.at_time
        for k in range(self.n):
            position, velocity, _ = at_time(k * 0.001)
            self.positions[k] = position
            self.velocities[k] = velocity
            if k % chunk == chunk - 1:
                await asyncio.sleep(0)
        self.velocities[-1] = 0.0
        self.positions[-1] = self.target
        # Row views made once here, so the loop indexes without creating views.
        self.position_rows = list(self.positions)
        self.velocity_rows = list(self.velocities)


class TargetRows:
    """Targets for the cycle, one row per robot millisecond from ``start_ms`` (the robot's clock).

    Joint rows: ``positions`` (n, 7) rad, with ``velocities`` (n, 7) rad/s
    (zeros when omitted), followed as ``q_desired`` / ``dq_desired`` in
    impedance mode. Pose rows: ``poses`` (n, 4, 4), followed as ``ee_desired``
    in osc mode. The arrays are copied and frozen here, and the row views the
    cycle indexes are made here, off the hot path. After the last row the
    cycle holds it (with zero velocity) and counts the cycles it held.
    ``Controller.play`` checks the values before the cycle sees them.

    Example::

        import numpy as np
        from aiofranka.loop.trajectory import TargetRows

        q = controller.state.q
        path = q + np.linspace(0.0, 0.1, 500)[:, None] * np.eye(7)[0]   # joint 1, 0.1 rad in 0.5 s
        controller.play(TargetRows(controller.time_ms + 5, positions=path))
    """

    __slots__ = ("start_ms", "n", "joint", "positions", "velocities", "poses", "position_rows", "velocity_rows",
                 "pose_rows", "_checked")

    def __init__(self, start_ms: int, *, positions=None, velocities=None, poses=None) -> None:
        if (positions is None) == (poses is None):
            raise ValueError("TargetRows needs either positions (joint rows) or poses (pose rows)")
        if isinstance(start_ms, bool) or not isinstance(start_ms, (int, np.integer)):
            raise TypeError(f"start_ms must be an int (robot milliseconds), got {start_ms!r}")
        self.start_ms = int(start_ms)
        self.joint = positions is not None
        self._checked = False
        if self.joint:
            self.positions = _frozen_rows("positions", positions, (7,))
            self.velocities = (np.zeros_like(self.positions) if velocities is None
                               else _frozen_rows("velocities", velocities, (7,)))
            if self.velocities.shape != self.positions.shape:
                raise ValueError(f"velocities must have the shape of positions {self.positions.shape}, "
                                 f"got {self.velocities.shape}")
            self.poses = None
            self.n = len(self.positions)
            # Held after the last row: zero velocity there.
            last_velocity = self.velocities[-1]
            if np.any(last_velocity != 0.0):
                velocities = self.velocities.copy()
                velocities[-1] = 0.0
                velocities.flags.writeable = False
                self.velocities = velocities
            self.position_rows = list(self.positions)
            self.velocity_rows = list(self.velocities)
            self.pose_rows = []
        else:
            if velocities is not None:
                raise ValueError("velocities go with joint rows (positions), not with poses")
            self.poses = _frozen_rows("poses", poses, (4, 4))
            self.positions = self.velocities = None
            self.n = len(self.poses)
            self.pose_rows = list(self.poses)
            self.position_rows = self.velocity_rows = []

    def check(self) -> "TargetRows":
        """Raise ``ValueError`` unless the loop may follow these rows: finite, joints inside the FR3 limits,
        proper rotations. The arrays are frozen, so a check holds for good; ``Controller.play`` calls it."""
        if self._checked:
            return self
        if self.joint:
            positions, velocities = self.positions, self.velocities
            if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(velocities))):
                raise ValueError("rows.positions and rows.velocities must be finite")
            outside = (positions < limits.Q_MIN) | (positions > limits.Q_MAX)
            if np.any(outside):
                row, joint = (int(i) for i in np.argwhere(outside)[0])
                raise ValueError(f"rows.positions leaves the FR3 joint limits: row {row}, joint {joint + 1}, "
                                 f"{positions[row, joint]:.4f} rad")
        else:
            poses = self.poses
            if not np.all(np.isfinite(poses)):
                raise ValueError("rows.poses must be finite")
            if not np.allclose(poses[:, 3], (0.0, 0.0, 0.0, 1.0), atol=1e-9):
                raise ValueError("rows.poses must have a last row of [0, 0, 0, 1]")
            rotations = poses[:, :3, :3]
            error = float(np.max(np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3))))
            if error > 1e-6 or np.any(np.linalg.det(rotations) <= 0):
                raise ValueError(f"rows.poses must hold proper rotations (orthonormal to 1e-6, det +1); "
                                 f"|R R^T - I| = {error:.3g}")
        self._checked = True
        return self

    @property
    def end_ms(self) -> int:
        """The robot time of the last row."""
        return self.start_ms + self.n - 1

    def row_at(self, time_ms: int) -> np.ndarray:
        """The target at robot time ``time_ms``: the first row before the start, the last after the end."""
        k = min(max(int(time_ms) - self.start_ms, 0), self.n - 1)
        return (self.position_rows if self.joint else self.pose_rows)[k]

    def __repr__(self) -> str:
        return f"<TargetRows {'joint' if self.joint else 'pose'} {self.n} rows from {self.start_ms} ms>"


def _frozen_rows(name: str, value, shape: tuple) -> np.ndarray:
    try:
        array = np.array(value, dtype=float, copy=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from exc
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape or len(array) == 0:
        raise ValueError(f"{name} must have shape (n, {', '.join(map(str, shape))}) with n >= 1, got {array.shape}")
    array.flags.writeable = False
    return array


def plan_joint_motion(q_start, dq_start, q_target, *, speed: float) -> JointTrajectory:
    """Plan a time-optimal joint motion within ``speed`` times the FR3 limits.

    ``speed`` scales the velocity, acceleration and jerk limits (0 < speed <= 1).
    """
    if Ruckig is None:
        raise MissingDependencyError("ruckig is not installed: pip install ruckig")
    inp = InputParameter(7)
    inp.current_position = [float(v) for v in q_start]
    inp.current_velocity = [float(v) for v in np.clip(dq_start, -limits.DQ_MAX, limits.DQ_MAX)]
    inp.current_acceleration = [0.0] * 7
    inp.target_position = [float(v) for v in q_target]
    inp.target_velocity = [0.0] * 7
    inp.target_acceleration = [0.0] * 7
    inp.max_velocity = (limits.DQ_MAX * speed).tolist()
    inp.max_acceleration = (limits.DDQ_MAX * speed).tolist()
    inp.max_jerk = (limits.DDDQ_MAX * speed * speed).tolist()
    trajectory = Trajectory(7)
    result = Ruckig(7).calculate(inp, trajectory)
    if result not in (Result.Working, Result.Finished):
        raise ValueError(f"no trajectory to q={list(q_target)} within the FR3 limits (ruckig: {result})")
    n = max(2, int(np.ceil(trajectory.duration * 1000.0)) + 1)
    return JointTrajectory(trajectory, n, np.asarray(q_target, dtype=float))


async def follow(cycle, trajectory: JointTrajectory, target: np.ndarray, *, tolerance: float,
                 timeout: float | None, wait, check) -> None:
    """Have ``cycle`` follow ``trajectory``; return once it ended and every joint is within ``tolerance`` of ``target``.

    ``wait(future)`` awaits a robot-time future of the cycle (raising the
    loop's error if it died); ``check()`` raises the loop's stored error.
    Raises :class:`MotionTimeoutError` after ``timeout`` s of robot time
    (default: the trajectory's duration plus 2 s); on timeout or cancellation
    the arm holds where the trajectory had got to.
    """
    buf = cycle.buf
    done = cycle.follow(trajectory)
    limit_ms = 1000.0 * (timeout if timeout is not None else trajectory.duration + 2.0)
    timer = cycle.wait_until(cycle.kernel.time_ms + limit_ms)
    try:
        await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            done.result()  # raises if interrupted
            while np.max(np.abs(buf.q - target)) > tolerance and not timer.done():
                await wait(cycle.wait_until(cycle.kernel.time_ms + 5))
        if timer.done() and np.max(np.abs(buf.q - target)) > tolerance:
            timer.result()  # raises ControllerStoppedError if the loop ended
            check()
            if cycle.is_following(trajectory):
                cycle.hold_trajectory_here()
                cycle.cancel_trajectory("move() timed out")
            error = np.max(np.abs(buf.q - target))
            raise MotionTimeoutError(f"move() did not arrive within {limit_ms / 1000.0:.2f} s of robot time "
                                     f"(largest joint error {error:.4f} rad)")
    except ControllerStoppedError:
        check()
        raise
    except asyncio.CancelledError:
        if cycle.is_following(trajectory):
            cycle.hold_trajectory_here()
            cycle.cancel_trajectory("move() was cancelled")
        raise
    finally:
        if not timer.done():
            timer.cancel()
