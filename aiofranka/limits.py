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

#: A comfortable pose in the middle of the workspace (rad).
Q_HOME = _const([0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398])
