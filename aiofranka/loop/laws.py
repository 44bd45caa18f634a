"""Control laws and the torque safety filter: the readable numpy reference.

The 1 kHz loop runs the same laws in C (``csrc/laws.c``); the tests
check the two against each other on random inputs. Everything here is a pure
function of its array arguments: inputs are read, results go into ``out``
(and into the scratch held by :class:`Workspace`); nothing is logged or
validated (validation happens where values are handed in, see
:mod:`aiofranka.validation`).

Conventions: joint vectors have shape (7,), poses are 4x4 homogeneous
transforms of the end effector in the base frame, Jacobians are (6, 7) with
the linear part first, torques are in N m. The robot compensates gravity
itself, so no law adds it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Workspace", "joint_impedance", "joint_limit_guard", "osc", "rotation_error", "safety_filter"]


class Workspace:
    """Scratch arrays for the laws, allocated once per controller."""

    def __init__(self) -> None:
        self.v6 = np.zeros(6)
        self.e6 = np.zeros(6)
        self.r33 = np.zeros((3, 3))
        self.l66 = np.zeros((6, 6))
        self.eye6 = np.eye(6)
        self.eye7 = np.eye(7)
        self.n77 = np.zeros((7, 7))
        self.a7 = np.zeros(7)
        self.b7 = np.zeros(7)
        self.c7 = np.zeros(7)


def joint_impedance(q, dq, q_desired, dq_desired, kp, kd, ws: Workspace, out) -> None:
    """``out = kp * (q_desired - q) + kd * (dq_desired - dq)``."""
    np.subtract(q_desired, q, out=out)
    out *= kp
    np.subtract(dq_desired, dq, out=ws.a7)
    ws.a7 *= kd
    out += ws.a7


def rotation_error(rotation, rotation_desired, ws: Workspace, out) -> None:
    """Orientation error (base frame) as ``sin(angle) * axis`` of ``Rd @ R.T``.

    Writes 3 values into ``out``. Exact in direction for any angle below pi and
    in magnitude to first order, which is what an impedance law needs.
    """
    s = np.matmul(rotation_desired, rotation.T, out=ws.r33)
    out[0] = 0.5 * (s[2, 1] - s[1, 2])
    out[1] = 0.5 * (s[0, 2] - s[2, 0])
    out[2] = 0.5 * (s[1, 0] - s[0, 1])


def osc(q, dq, pose, jacobian, pose_desired, ee_kp, ee_kd, q_null, null_kp, null_kd,
        ws: Workspace, out, damping: float = 1e-3, max_translation: float = 0.05,
        max_rotation: float = 0.3) -> None:
    """Cartesian (operational-space) impedance with a null-space posture term.

    ``F = ee_kp * e - ee_kd * (J dq)`` with ``e`` the pose error (translation,
    then ``sin(angle) * axis`` of the rotation error, both in the base frame),
    ``tau = J^T F + N tau_null`` with ``N = I - J^T (J J^T + damping I)^-1 J``
    and ``tau_null = null_kp * (q_null - q) - null_kd * dq``.

    Gains are per task axis (x, y, z, rx, ry, rz): N/m and N m/rad for
    ``ee_kp``, N s/m and N m s/rad for ``ee_kd``. They act as a spring at the
    end effector directly, without the mass matrix, so a model error in the
    arm's inertia (reflected rotor inertia, a gripper) does not change them.
    The translational error is capped at ``max_translation`` (m) and the
    rotational one at ``max_rotation`` (rad), so a distant target is
    approached at bounded force.
    """
    e = ws.e6
    e[0] = pose_desired[0, 3] - pose[0, 3]
    e[1] = pose_desired[1, 3] - pose[1, 3]
    e[2] = pose_desired[2, 3] - pose[2, 3]
    rotation_error(pose[:3, :3], pose_desired[:3, :3], ws, e[3:])
    # Bound the error so a far target pulls with a bounded force: with the
    # torque rate limit in the loop, an unbounded spring overshoots.
    norm = math.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])
    if norm > max_translation:
        e[:3] *= max_translation / norm
    norm = math.sqrt(e[3] * e[3] + e[4] * e[4] + e[5] * e[5])
    if norm > max_rotation:
        e[3:] *= max_rotation / norm
    e *= ee_kp
    np.matmul(jacobian, dq, out=ws.v6)
    ws.v6 *= ee_kd
    e -= ws.v6
    np.matmul(jacobian.T, e, out=out)
    # Null space: N = I - J^T (J J^T + damping I)^-1 J
    np.matmul(jacobian, jacobian.T, out=ws.l66)
    ws.l66 += damping * ws.eye6
    pinv_t = np.linalg.solve(ws.l66, jacobian)  # (6, 7)
    np.matmul(jacobian.T, pinv_t, out=ws.n77)
    np.subtract(ws.eye7, ws.n77, out=ws.n77)
    np.subtract(q_null, q, out=ws.b7)
    ws.b7 *= null_kp
    np.multiply(dq, null_kd, out=ws.c7)
    ws.b7 -= ws.c7
    np.matmul(ws.n77, ws.b7, out=ws.c7)
    out += ws.c7


def joint_limit_guard(q, dq, q_min, q_max, margin: float, stiffness: float, damping: float, out) -> None:
    """Add a repulsive spring and damper near the joint limits to ``out``.

    Inside ``margin`` (rad) of a limit a joint gets ``stiffness * depth`` (N m)
    pushing it back, and ``damping * speed`` opposing motion further into the
    band. Nothing is added elsewhere. ``q`` and ``dq`` may be lists or arrays;
    plain floats are used because the guard is idle almost always and a
    scalar test per joint is cheaper than a vector pass.
    """
    for i in range(7):
        qi = q[i]
        depth = margin - (qi - q_min[i])
        if depth > 0.0:
            v = dq[i]
            out[i] += stiffness * depth - (damping * v if v < 0.0 else 0.0)
            continue
        depth = margin - (q_max[i] - qi)
        if depth > 0.0:
            v = dq[i]
            out[i] -= stiffness * depth + (damping * v if v > 0.0 else 0.0)


def safety_filter(tau_desired, tau_last, dtau_max, tau_max, out) -> bool:
    """Rate-limit and saturate a torque command; return False if it was not finite.

    ``dtau_max`` and ``tau_max`` are (7,) arrays of positive limits (N m per
    cycle, N m). ``out = clip(clip(tau_desired, tau_last - dtau_max,
    tau_last + dtau_max), -tau_max, tau_max)``. A NaN or infinite
    ``tau_desired`` instead moves ``tau_last`` one step towards zero and returns
    False, so the caller can stop the law; the command stays finite and
    rate-limited either way.
    """
    if not math.isfinite(float(np.dot(tau_desired, tau_desired))):
        np.minimum(tau_last, dtau_max, out=out)
        np.negative(dtau_max, out=tau_desired)
        np.maximum(out, tau_desired, out=out)
        np.subtract(tau_last, out, out=out)
        return False
    np.subtract(tau_desired, tau_last, out=out)
    np.minimum(out, dtau_max, out=out)
    np.negative(dtau_max, out=tau_desired)
    np.maximum(out, tau_desired, out=out)
    out += tau_last
    np.minimum(out, tau_max, out=out)
    np.negative(tau_max, out=tau_desired)
    np.maximum(out, tau_desired, out=out)
    return True
