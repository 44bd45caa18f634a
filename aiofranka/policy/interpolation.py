"""Policy-rate waypoints to 1 kHz target rows, continuous at raw steps and at chunk switches.

Positions along a chunk are measured in control steps: ``x = j`` is waypoint
``j`` (the action for the chunk's step ``j``), ``x = -1`` the waypoint before
it (``previous``). Rows start at ``x_start`` (where the arm's step clock is
when the rows take over) and advance ``1 / period_ms`` step per millisecond up
to the last waypoint. Between waypoints joints move linearly and poses along
the geodesic (positions linear, rotations slerped through the log map). At the
first row the target is ``current`` (what the loop commands at that instant),
and the difference between ``current`` and the chunk's own path there fades out
linearly over one control step, so a switch never steps the target: it bends
it. Pure functions of arrays; see docs/policies.md#execution-at-1-khz.
"""

from __future__ import annotations

import math

import numpy as np

from ._se3 import exp_so3, log_so3, log_so3_many

__all__ = ["joint_rows", "pose_rows", "row_positions"]


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


def _fade(x: np.ndarray, x_start: float) -> np.ndarray:
    return np.clip(1.0 - (x - x_start), 0.0, 1.0)


def _held(x: np.ndarray, count: int) -> np.ndarray:
    # Each waypoint from its own step to the next: the point index floor(x) + 1.
    return np.clip(np.floor(x + 1e-9).astype(int) + 1, 0, count)


def joint_rows(previous, waypoints, x_start: float, current, period_ms: float, *,
               hold: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Joint rows (n, d) and their velocities (n, d) per second, for ``waypoints`` (m, d) after ``previous`` (d,).

    The last velocity row is zero (the target is held there). ``hold``: no
    interpolation, each waypoint is held for its step and the switch is not
    faded (the target steps, as when a policy sets targets at its own rate).
    """
    waypoints = np.asarray(waypoints, dtype=float)
    points = np.vstack([np.asarray(previous, dtype=float)[None], waypoints])
    x = row_positions(len(waypoints), x_start, period_ms)
    if hold:
        rows = points[_held(x, len(waypoints))]
        return rows, np.zeros_like(rows)
    i0, frac = _segments(x, len(waypoints))
    path = points[i0] + frac[:, None] * (points[i0 + 1] - points[i0])
    start_on_path = path[0]
    rows = path + _fade(x, x_start)[:, None] * (np.asarray(current, dtype=float) - start_on_path)
    velocities = np.zeros_like(rows)
    velocities[:-1] = np.diff(rows, axis=0) * 1000.0
    return rows, velocities


def pose_rows(previous, waypoints, x_start: float, current, period_ms: float, *, hold: bool = False) -> np.ndarray:
    """Pose rows (n, 4, 4) for pose ``waypoints`` (m, 4, 4) after ``previous`` (4, 4); ``hold`` as for joints."""
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
    fade = _fade(x, x_start)
    offset_rot = log_so3(current[:3, :3] @ rot[0].T)
    rows = np.zeros((len(x), 4, 4))
    rows[:, 3, 3] = 1.0
    rows[:, :3, :3] = exp_so3(fade[:, None] * offset_rot) @ rot
    rows[:, :3, 3] = pos + fade[:, None] * (current[:3, 3] - pos[0])
    return rows
