"""Checks applied where users hand values in, never inside the 1 kHz loop.

Each function returns a private, read-only float64 copy, so a value the loop
holds can never be changed under it, and raises ``ValueError`` (or
``TypeError``) naming the parameter.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import limits

__all__ = ["gains", "joint_positions", "pose", "positive", "real", "torques", "vector"]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=float, copy=True)
    array.flags.writeable = False
    return array


def _as_float_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from exc
    return array


def vector(name: str, value, n: int, *, broadcast: bool = False) -> np.ndarray:
    """A finite vector of shape (n,); a scalar is broadcast when ``broadcast``."""
    array = _as_float_array(name, value)
    if broadcast and array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return _frozen(array)


def gains(name: str, value, n: int, *, upper=None, unit="", why=None) -> np.ndarray:
    """Non-negative finite gains of shape (n,) (a scalar is broadcast), each at most ``upper[i]``.

    ``unit``: one for all, or one per index; ``why(i)`` says why gain ``i``
    is bounded. The error names the parameter, the index, the bound and that reason.
    """
    array = vector(name, value, n, broadcast=True)
    if np.any(array < 0):
        raise ValueError(f"{name} must be non-negative, got {array.tolist()}")
    if upper is not None:
        over = np.flatnonzero(array > upper)
        if over.size:
            i = int(over[0])
            where = f"{name}[{i}]" if n > 1 else name
            reason = f": {why(i)}" if why is not None else ""
            units = unit if isinstance(unit, str) else unit[i]
            raise ValueError(f"{where} = {array[i]:g} is above its bound {float(upper[i]):.6g} {units}{reason}, "
                             f"so a value that large is surely a typo (docs/controller.md#gain-bounds)")
    return array


def joint_positions(name: str, value) -> np.ndarray:
    """Seven joint positions inside the FR3 limits (rad)."""
    array = vector(name, value, 7)
    outside = (array < limits.Q_MIN) | (array > limits.Q_MAX)
    if np.any(outside):
        joints = [int(i) + 1 for i in np.flatnonzero(outside)]
        raise ValueError(
            f"{name} is outside the FR3 joint limits at joint(s) {joints}: "
            f"{array.tolist()} (limits {limits.Q_MIN.tolist()} .. {limits.Q_MAX.tolist()})")
    return array


def torques(name: str, value) -> np.ndarray:
    """Seven finite joint torques (N m); magnitude is left to the safety filter."""
    return vector(name, value, 7)


def pose(name: str, value, *, tolerance: float = 1e-3) -> np.ndarray:
    """A 4x4 homogeneous transform with a proper rotation (orthonormal, det +1)."""
    array = _as_float_array(name, value)
    if array.shape != (4, 4):
        raise ValueError(f"{name} must have shape (4, 4), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    if not np.allclose(array[3], (0.0, 0.0, 0.0, 1.0), atol=1e-9):
        raise ValueError(f"{name} must have a last row of [0, 0, 0, 1], got {array[3].tolist()}")
    rotation = array[:3, :3]
    error = float(np.max(np.abs(rotation @ rotation.T - np.eye(3))))
    if error > tolerance or np.linalg.det(rotation) <= 0:
        raise ValueError(f"{name} must hold a proper rotation (orthonormal with det +1); "
                         f"|R R^T - I| = {error:.3g}, det = {np.linalg.det(rotation):.3g}")
    # Re-orthonormalise within the tolerance so the control law sees an exact rotation.
    u, _, vt = np.linalg.svd(rotation)
    array = array.copy()
    array[:3, :3] = u @ vt
    return _frozen(array)


def positive(name: str, value, *, upper: float | None = None) -> float:
    """A finite, strictly positive number (optionally at most ``upper``)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from exc
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    if upper is not None and number > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value!r}")
    return number


def real(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number (not a bool, not a string), at least ``minimum`` (``strict``: above it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return number
