"""Rotations and rigid transforms as numpy arrays: the log and exp maps of SO(3), slerp, pose blends.

Vectorised over a leading axis where it matters (rows of a 1 kHz plan). Pure functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["blend_pose", "exp_so3", "log_so3", "log_so3_many", "orthonormal", "pose_path"]


def exp_so3(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (Rodrigues)."""
    rotvec = np.asarray(rotvec, dtype=float)
    theta = np.linalg.norm(rotvec, axis=-1)[..., None, None]
    k = np.zeros(rotvec.shape[:-1] + (3, 3))
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    k[..., 0, 1], k[..., 0, 2] = -z, y
    k[..., 1, 0], k[..., 1, 2] = z, -x
    k[..., 2, 0], k[..., 2, 1] = -y, x
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    # sin(t)/t and (1 - cos t)/t^2, with their series near zero.
    a = np.where(small, 1.0 - theta ** 2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta ** 2 / 24.0, (1.0 - np.cos(safe)) / safe ** 2)
    return np.eye(3) + a * k + b * (k @ k)


def log_so3(rotation: np.ndarray) -> np.ndarray:
    """The rotation vector (3,) of a rotation matrix (3, 3), angle in [0, pi]."""
    r = np.asarray(rotation, dtype=float)
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    theta = float(np.arccos(cos))
    skew = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if theta < 1e-6:
        return skew / 2.0
    if np.pi - theta < 1e-4:
        # Near pi the skew part vanishes: take the axis from the symmetric part.
        m = (r + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(m)))
        axis = m[:, i] / np.sqrt(max(m[i, i], 1e-12))
        axis /= np.linalg.norm(axis)
        if np.dot(axis, skew) < 0:
            axis = -axis
        return axis * theta
    return skew * (theta / (2.0 * np.sin(theta)))


def log_so3_many(rotations: np.ndarray) -> np.ndarray:
    """Rotation vectors (n, 3) of rotation matrices (n, 3, 3); angles near pi go through :func:`log_so3`."""
    r = np.asarray(rotations, dtype=float)
    cos = np.clip((np.trace(r, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    skew = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], axis=1)
    small = theta < 1e-6
    scale = np.where(small, 0.5, theta / (2.0 * np.sin(np.where(small, 1.0, theta))))
    out = skew * scale[:, None]
    for i in np.flatnonzero(np.pi - theta < 1e-4):
        out[i] = log_so3(r[i])
    return out


def orthonormal(rotation: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=float))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] = -u[:, -1]
        r = u @ vt
    return r


def blend_pose(old: np.ndarray, new: np.ndarray, weight: float) -> np.ndarray:
    """The pose ``weight`` of the way from ``old`` to ``new`` (4x4): positions lerped, rotations slerped."""
    out = np.eye(4)
    out[:3, 3] = (1.0 - weight) * old[:3, 3] + weight * new[:3, 3]
    r0 = old[:3, :3]
    out[:3, :3] = r0 @ exp_so3(weight * log_so3(r0.T @ new[:3, :3]))
    return out


def pose_path(start: np.ndarray, end: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses (n, 4, 4) at fractions ``s`` (n,) of the way from ``start`` to ``end`` (the geodesic on SE(3)'s parts)."""
    s = np.asarray(s, dtype=float)
    out = np.zeros((s.size, 4, 4))
    out[:, 3, 3] = 1.0
    out[:, :3, 3] = start[:3, 3] + s[:, None] * (end[:3, 3] - start[:3, 3])
    w = log_so3(start[:3, :3].T @ end[:3, :3])
    out[:, :3, :3] = start[:3, :3] @ exp_so3(s[:, None] * w)
    return out
