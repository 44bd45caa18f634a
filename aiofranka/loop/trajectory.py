"""Jerk-limited joint trajectories (ruckig), sampled at 1 kHz ahead of time.

The loop must not plan or allocate, so :func:`plan_joint_motion` computes the
whole time-optimal trajectory with ruckig when ``move()`` is called and
:func:`sample` writes positions and velocities for every millisecond into
preallocated arrays, yielding to the event loop between chunks.
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

__all__ = ["JointTrajectory", "plan_joint_motion"]


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
    timer = cycle.wait_until(buf.time_ms + limit_ms)
    try:
        await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            done.result()  # raises if interrupted
            while np.max(np.abs(buf.q - target)) > tolerance and not timer.done():
                await wait(cycle.wait_until(buf.time_ms + 5))
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
