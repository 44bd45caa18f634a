"""Franka Research 3 limits (FCI datasheet figures), as read-only numpy arrays."""

from __future__ import annotations

import numpy as np


def _const(values) -> np.ndarray:
    array = np.array(values, dtype=float)
    array.flags.writeable = False
    return array


#: Joint position limits (rad).
Q_MIN = _const([-2.9007, -1.8361, -2.9007, -3.0770, -2.8763, 0.4398, -3.0508])
Q_MAX = _const([2.9007, 1.8361, 2.9007, -0.1169, 2.8763, 4.6216, 3.0508])
#: Joint velocity limits (rad/s).
DQ_MAX = _const([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
#: Joint acceleration (rad/s^2) and jerk (rad/s^3) limits.
DDQ_MAX = _const([10.0] * 7)
DDDQ_MAX = _const([5000.0] * 7)
#: Joint torque limits (N m).
TAU_MAX = _const([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
#: Largest torque change per 1 ms cycle the robot accepts (N m); we stay below it.
DTAU_MAX_PER_CYCLE = 1.0

#: FR3 maximum reach (m, datasheet): the longest lever a force at the flange has.
REACH = 0.855

# Upper bounds of the gains (docs/controller.md#gain-bounds). Each is the gain
# that would command a whole torque limit for an error or a velocity so small
# that no real use asks for it: a value above is surely a typo.
#: The tiny error: 1 mrad (0.057 deg), and 1 mm at the flange.
GAIN_ERROR = 1e-3
#: The tiny velocity: 10 mrad/s (0.57 deg/s), and 10 mm/s at the flange.
GAIN_SPEED = 1e-2
#: The force at the flange that loads a shoulder joint to its limit with the
#: arm outstretched (87 N m / 0.855 m, about 102 N).
FORCE_REF = float(TAU_MAX[0]) / REACH
#: The moment about the flange that loads a wrist joint to its limit (N m).
MOMENT_REF = float(TAU_MAX[6])
#: Joint stiffness bound (N m/rad): the torque limit at 1 mrad.
KP_MAX = _const(TAU_MAX / GAIN_ERROR)
#: Joint damping bound (N m s/rad): the torque limit at 10 mrad/s.
KD_MAX = _const(TAU_MAX / GAIN_SPEED)
#: Task stiffness bound (x, y, z in N/m; rx, ry, rz in N m/rad).
EE_KP_MAX = _const([FORCE_REF / GAIN_ERROR] * 3 + [MOMENT_REF / GAIN_ERROR] * 3)
#: Task damping bound (N s/m; N m s/rad).
EE_KD_MAX = _const([FORCE_REF / GAIN_SPEED] * 3 + [MOMENT_REF / GAIN_SPEED] * 3)

#: A comfortable pose in the middle of the workspace (rad).
Q_HOME = _const([0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398])
