"""Policy-rate waypoints to 1 kHz target rows, continuous at raw steps and at chunk switches.

Positions along a chunk are measured in control steps: ``x = j`` is waypoint
``j`` (the action for the chunk's step ``j``), ``x = -1`` the waypoint before
it (``previous``). Rows start at ``x_start`` (where the arm's step clock is
when the rows take over) and advance ``1 / period_ms`` step per millisecond up
to the last waypoint. Joints follow a C1 cubic through the waypoints (or a
straight line), poses the geodesic (positions linear, rotations slerped
through the log map). At the first row the target is ``current`` (what the
loop commands at that instant), and the difference between ``current`` and
the chunk's own path fades out over one control step, so a switch never steps
the target: it bends it. Pure functions of arrays; see
docs/policies.md#execution-at-1-khz.
"""

from __future__ import annotations

import math

import numpy as np

from ._se3 import exp_so3, log_so3, log_so3_many

__all__ = ["joint_rows", "pose_rows", "row_positions", "step_bounded_join"]


def row_positions(count: int, x_start: float, period_ms: float) -> np.ndarray:
    """The step positions of the rows: from ``x_start`` every ``1/period_ms`` step to ``count - 1`` (the last waypoint)."""
    last = count - 1
    if x_start >= last:
        return np.array([float(last)])
    n = int(math.ceil((last - x_start) * period_ms - 1e-9)) + 1
    x = x_start + np.arange(n) / period_ms
    x[-1] = min(x[-1], last)
    return np.minimum(x, last)


def _segments(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    # Point index u = x + 1 over [previous, w_0, ..., w_{count-1}].
    u = x + 1.0
    i0 = np.clip(np.floor(u).astype(int), 0, count - 1)
    return i0, np.clip(u - i0, 0.0, 1.0)


def _fade(x: np.ndarray, x_start: float, steps: float = 1.0) -> np.ndarray:
    return np.clip(1.0 - (x - x_start) / steps, 0.0, 1.0)


def join_steps(offset: float, speed: float | None, period_ms: float) -> float:
    """Steps over which a switch joins the new path: one, or more so that closing ``offset`` takes no more
    than ``speed`` (per second)."""
    if speed is None or speed <= 0:
        return 1.0
    return max(1.0, float(offset) / (speed * period_ms / 1000.0))


#: The longest join a fast path stretches a switch to (steps): beyond it the join lags the policy too long.
MAX_JOIN_STEPS = 4.0


def step_bounded_join(offset: np.ndarray, path_slope: np.ndarray, points: np.ndarray, peak: float,
                      shortest: float, extra=0.0) -> float:
    """Steps over which a switch joins so that the target moves no faster than the largest step it
    connects: the largest difference between consecutive waypoints (``previous`` included) or the
    offset itself, across joints (the interpolation step). On each joint the join adds ``peak`` times
    its offset per step (1 for a straight fade, 1.5 at a Hermite blend's steepest) to the path's own
    ``path_slope`` (per step, the fastest near the start); the join lasts at least ``shortest`` steps
    and at most ``MAX_JOIN_STEPS``. ``extra`` (per step, per joint): what else the join may add at its
    steepest (a cubic join's velocity blend: a third of the velocity difference)."""
    size = np.abs(offset)
    step = max(float(np.abs(np.diff(points, axis=0)).max(initial=0.0)), float(size.max(initial=0.0)))
    if step <= 0.0:
        return shortest
    # A target ahead of the path (offset along the path's motion) slows down while it joins: it only
    # needs the step itself. One behind has to catch up on top of the path's speed; on a path already
    # at the step the join gets a tenth of it (and MAX_JOIN_STEPS bounds the wait).
    behind = offset * path_slope < 0
    room = np.where(behind, np.maximum(step - np.abs(path_slope) - extra, 0.1 * step), step)
    return float(min(MAX_JOIN_STEPS, max(shortest, float((peak * size / room).max()))))


def _fastest(slopes: np.ndarray) -> np.ndarray:
    """Per joint, the slope of largest magnitude among ``slopes`` (rows), sign kept."""
    index = np.abs(slopes).argmax(axis=0)
    return slopes[index, np.arange(slopes.shape[1])]


def _join_points(points: np.ndarray, x_start: float) -> np.ndarray:
    """The waypoints up to where the longest join ends: the steps a join is held to are the ones around
    it (a later, faster part of a chunk that a newer chunk replaces is never executed)."""
    return points[: max(2, int(math.floor(x_start + 1.0)) + int(MAX_JOIN_STEPS) + 2)]


def _near_start(x: np.ndarray, x_start: float) -> np.ndarray:
    return (x - x_start) < MAX_JOIN_STEPS


def _held(x: np.ndarray, count: int) -> np.ndarray:
    # Each waypoint from its own step to the next: the point index floor(x) + 1.
    return np.clip(np.floor(x + 1e-9).astype(int) + 1, 0, count)


def _hermite(s: np.ndarray) -> tuple:
    s2, s3 = s * s, s * s * s
    return 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2


def _hermite_slopes(s: np.ndarray) -> tuple:
    s2 = s * s
    return 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s


def joint_rows(previous, waypoints, x_start: float, current, period_ms: float, *, mode: str = "cubic",
               current_velocity=None, join_speed: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Joint rows (n, d) and their velocities (n, d) in units per second, for ``waypoints`` (m, d) after ``previous``.

    ``mode``:

    * ``"cubic"``: a C1 path through every waypoint (cubic Hermite, tangents
      from the neighbouring waypoints, zero at the last one); at the start it
      leaves ``current`` with ``current_velocity`` (per second) and joins the
      chunk's path within one and a half steps (at the steepest, as fast as
      a straight join in one step), position and velocity continuous. The
      velocities are the path's own: continuous, safe to feed forward.
    * ``"linear"``: straight between waypoints, the difference to ``current``
      faded linearly over one step; continuous positions, velocities zero (a
      piecewise-constant velocity fed forward kicks the arm at every waypoint).
    * ``"hold"``: each waypoint held for its step, no fade (the target steps,
      as when a policy sets targets at its own rate); velocities zero.

    ``join_speed`` (rad/s): a switch whose difference to the chunk's path is
    large (after a starvation, the policy has moved on) joins over as many
    steps as closing it at that speed takes, instead of one.

    The last row is the last waypoint (unless a long join is still closing), with zero velocity (it is held there).
    """
    waypoints = np.asarray(waypoints, dtype=float)
    points = np.vstack([np.asarray(previous, dtype=float)[None], waypoints])
    count = len(waypoints)
    x = row_positions(count, x_start, period_ms)
    current = np.asarray(current, dtype=float)
    if mode == "hold":
        rows = points[_held(x, count)]
        return rows, np.zeros_like(rows)
    i0, frac = _segments(x, count)
    if mode == "linear":
        path = points[i0] + frac[:, None] * (points[i0 + 1] - points[i0])
        offset = current - path[0]
        near = _near_start(x, x_start)
        segment_slope = _fastest(points[i0[near] + 1] - points[i0[near]])
        steps = max(join_steps(np.abs(offset).max(), join_speed, period_ms),
                    step_bounded_join(offset, segment_slope, _join_points(points, x_start), 1.0, 1.0))
        rows = path + _fade(x, x_start, steps)[:, None] * offset
        return rows, np.zeros_like(rows)
    if mode != "cubic":
        raise ValueError(f"mode must be 'cubic', 'linear' or 'hold', got {mode!r}")
    # Tangents per step: central differences, one-sided at the first point, zero at the last.
    tangents = np.zeros_like(points)
    if count >= 2:
        tangents[1:-1] = (points[2:] - points[:-2]) / 2.0
    tangents[0] = points[1] - points[0]
    h00, h10, h01, h11 = _hermite(frac)
    d00, d10, d01, d11 = _hermite_slopes(frac)
    a, b, ta, tb = points[i0], points[i0 + 1], tangents[i0], tangents[i0 + 1]
    path = h00[:, None] * a + h10[:, None] * ta + h01[:, None] * b + h11[:, None] * tb
    slope = d00[:, None] * a + d10[:, None] * ta + d01[:, None] * b + d11[:, None] * tb  # per step
    # Join from the commanded target and velocity within one step (or more, at
    # join_speed): a Hermite blend of the offsets over u in [0, 1], so position
    # and velocity are continuous at both ends.
    per_step = period_ms / 1000.0  # seconds per step
    v0 = np.zeros_like(current) if current_velocity is None else np.asarray(current_velocity, dtype=float) * per_step
    offset, offset_slope = current - path[0], v0 - slope[0]
    # At least 1.5 steps: the blend's steepest slope is 1.5 times its mean, so the
    # join never moves faster than a straight line would close the offset in one step;
    # longer where the path itself is fast, so that path and join together stay
    # within the interpolation step.
    near_slope = _fastest(slope[_near_start(x, x_start)])
    length = max(join_steps(np.abs(offset).max(), join_speed, period_ms),
                 step_bounded_join(offset, near_slope, _join_points(points, x_start), 1.5, 1.5,
                                   np.abs(offset_slope) / 3.0))
    u = np.clip((x - x_start) / length, 0.0, 1.0)
    inside = (x - x_start) < length
    g00, g10, _, _ = _hermite(u)
    e00, e10, _, _ = _hermite_slopes(u)
    g00, g10, e00, e10 = (np.where(inside, g, 0.0) for g in (g00, g10, e00, e10))
    # d/dx = (1/length) d/du: the slope offset is scaled so the velocity at the start stays v0.
    rows = path + g00[:, None] * offset + (length * g10)[:, None] * offset_slope
    velocities = (slope + (e00 / length)[:, None] * offset + e10[:, None] * offset_slope) / per_step
    velocities[-1] = 0.0
    return rows, velocities


def pose_rows(previous, waypoints, x_start: float, current, period_ms: float, *, hold: bool = False,
              join_speed: tuple[float, float] | None = None) -> np.ndarray:
    """Pose rows (n, 4, 4) for pose ``waypoints`` (m, 4, 4) after ``previous`` (4, 4): along the geodesic between
    waypoints, the difference to ``current`` faded over one step, or more with ``join_speed`` = (m/s, rad/s)
    (``hold`` as for joints). The osc law takes no desired velocity, so no velocity is made."""
    waypoints = np.asarray(waypoints, dtype=float)
    points = np.concatenate([np.asarray(previous, dtype=float)[None], waypoints])
    x = row_positions(len(waypoints), x_start, period_ms)
    if hold:
        return points[_held(x, len(waypoints))].copy()
    i0, frac = _segments(x, len(waypoints))
    rotations = points[:, :3, :3]
    # One rotation vector per segment, then each row turns its share of it.
    steps = log_so3_many(rotations[:-1].transpose(0, 2, 1) @ rotations[1:])
    rot = rotations[i0] @ exp_so3(frac[:, None] * steps[i0])
    pos = points[i0, :3, 3] + frac[:, None] * (points[i0 + 1, :3, 3] - points[i0, :3, 3])
    current = np.asarray(current, dtype=float)
    offset_rot = log_so3(current[:3, :3] @ rot[0].T)
    steps = 1.0
    if join_speed is not None:
        steps = max(join_steps(np.linalg.norm(current[:3, 3] - pos[0]), join_speed[0], period_ms),
                    join_steps(np.linalg.norm(offset_rot), join_speed[1], period_ms))
    fade = _fade(x, x_start, steps)
    rows = np.zeros((len(x), 4, 4))
    rows[:, 3, 3] = 1.0
    rows[:, :3, :3] = exp_so3(fade[:, None] * offset_rot) @ rot
    rows[:, :3, 3] = pos + fade[:, None] * (current[:3, 3] - pos[0])
    return rows
