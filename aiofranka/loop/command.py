"""The settable gains and targets, declared once.

Each :class:`Setting` names one value the control law reads: its shape,
validator, the modes that use it and its doc. The Controller's attributes,
server mode's forwarded attributes and the Session adapter's actions are all
made from :data:`TABLE`. :class:`Commands` holds the current values in named
fields, which the cycle hands to the kernel (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .. import limits, validation

__all__ = ["GAIN_BOUNDS", "MODES", "SETTABLE", "TABLE", "Commands", "Setting", "check_mode", "gains", "validate"]

#: Control modes accepted by ``Controller.switch``.
MODES = ("impedance", "osc", "torque")
IMPEDANCE, OSC, TORQUE = range(3)
_MODE_INDEX = {name: i for i, name in enumerate(MODES)}

# Defaults: joint gains of libfranka's joint impedance example; Cartesian gains
# in N/m, N m/rad (stiffness) and N s/m, N m s/rad (damping).
DEFAULT_KP = (600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0)
DEFAULT_KD = (50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0)
DEFAULT_EE_KP = (1000.0, 1000.0, 1000.0, 60.0, 60.0, 60.0)
DEFAULT_EE_KD = (60.0, 60.0, 60.0, 6.0, 6.0, 6.0)
DEFAULT_NULL_KP = (10.0, 10.0, 10.0, 10.0, 5.0, 5.0, 2.0)
DEFAULT_NULL_KD = (2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One settable value: ``validate(name, value)`` returns the frozen array the law reads."""

    name: str
    shape: tuple[int, ...]
    validate: Callable[[str, object], np.ndarray]
    modes: tuple[str, ...]
    doc: str
    default: object


_AXES = ("x", "y", "z", "rx", "ry", "rz")
_MRAD = f"{limits.GAIN_ERROR * 1e3:g} mrad"
_MRAD_S = f"{limits.GAIN_SPEED * 1e3:g} mrad/s"
_MM = f"{limits.GAIN_ERROR * 1e3:g} mm"
_MM_S = f"{limits.GAIN_SPEED * 1e3:g} mm/s"


def _joint(what: str) -> Callable[[int], str]:
    return lambda i: f"{what} would command joint {i + 1}'s whole torque limit ({limits.TAU_MAX[i]:g} N m)"


def _task(linear: str, angular: str) -> Callable[[int], str]:
    def why(i: int) -> str:
        if i < 3:
            return (f"{linear} along {_AXES[i]} would ask {limits.FORCE_REF:.0f} N, which loads a shoulder joint "
                    f"to its limit ({limits.TAU_MAX[0]:g} N m) with the arm outstretched ({limits.REACH} m)")
        return f"{angular} about {_AXES[i]} would ask {limits.MOMENT_REF:g} N m, a wrist joint's whole torque limit"
    return why


#: The bounds of every gain and why (docs/controller.md#gain-bounds): the gain
#: that would spend a whole torque limit on a tiny error or velocity.
#: name -> (upper bound per index, unit, why(index)).
GAIN_BOUNDS = {
    "kp": (limits.KP_MAX, "N m/rad", _joint(f"at that stiffness a {_MRAD} error")),
    "kd": (limits.KD_MAX, "N m s/rad", _joint(f"at that damping a {_MRAD_S} velocity")),
    "ee_kp": (limits.EE_KP_MAX, ("N/m",) * 3 + ("N m/rad",) * 3,
              _task(f"at that stiffness a {_MM} error", f"at that stiffness a {_MRAD} error")),
    "ee_kd": (limits.EE_KD_MAX, ("N s/m",) * 3 + ("N m s/rad",) * 3,
              _task(f"at that damping a {_MM_S} velocity", f"at that damping a {_MRAD_S} velocity")),
    "null_kp": (limits.KP_MAX, "N m/rad", _joint(f"at that stiffness a {_MRAD} error")),
    "null_kd": (limits.KD_MAX, "N m s/rad", _joint(f"at that damping a {_MRAD_S} velocity")),
    # One value for every joint: bounded by the smallest torque limit (the wrist's).
    "joint_limit_stiffness": (limits.KP_MAX[-1:], "N m/rad",
                              lambda i: f"a {_MRAD} push into the guard band would command the wrist joints' "
                                        f"whole torque limit ({limits.TAU_MAX[-1]:g} N m)"),
    "joint_limit_damping": (limits.KD_MAX[-1:], "N m s/rad",
                            lambda i: f"a {_MRAD_S} velocity in the guard band would command the wrist joints' "
                                      f"whole torque limit ({limits.TAU_MAX[-1]:g} N m)"),
}


def gains(name: str, value, n: int) -> np.ndarray:
    """``validation.gains`` with the bound of gain ``name`` from :data:`GAIN_BOUNDS`."""
    upper, unit, why = GAIN_BOUNDS[name]
    return validation.gains(name, value, n, upper=upper, unit=unit, why=why)


def _gains(n: int) -> Callable[[str, object], np.ndarray]:
    return lambda name, value: gains(name, value, n)


TABLE: tuple[Setting, ...] = (
    Setting("kp", (7,), _gains(7), ("impedance",), "Joint stiffness, (7,) N m/rad (impedance mode).", DEFAULT_KP),
    Setting("kd", (7,), _gains(7), ("impedance",), "Joint damping, (7,) N m s/rad (impedance mode).", DEFAULT_KD),
    Setting("ee_kp", (6,), _gains(6), ("osc",),
            "Task stiffness (x, y, z, rx, ry, rz), (6,) N/m and N m/rad (osc mode).", DEFAULT_EE_KP),
    Setting("ee_kd", (6,), _gains(6), ("osc",), "Task damping, (6,) N s/m and N m s/rad (osc mode).",
            DEFAULT_EE_KD),
    Setting("null_kp", (7,), _gains(7), ("osc",), "Null-space posture stiffness, (7,) N m/rad (osc mode).",
            DEFAULT_NULL_KP),
    Setting("null_kd", (7,), _gains(7), ("osc",), "Null-space posture damping, (7,) N m s/rad (osc mode).",
            DEFAULT_NULL_KD),
    Setting("q_desired", (7,), validation.joint_positions, ("impedance", "osc"),
            "Joint target (rad): the impedance set point, and the posture of the osc null space.",
            limits.Q_HOME),
    Setting("ee_desired", (4, 4), validation.pose, ("osc",),
            "End-effector target pose, 4x4 in the base frame (osc mode).", np.eye(4)),
    Setting("torque", (7,), validation.torques, ("torque",),
            "Commanded joint torques, (7,) N m (torque mode; still rate-limited).", np.zeros(7)),
)

#: Names of the settable gains and targets, in table order.
SETTABLE = tuple(s.name for s in TABLE)
_BY_NAME = {s.name: s for s in TABLE}
#: The target each mode's actions set (``Franka``'s ``action``).
ACTION_MODES = {"q_desired": "impedance", "ee_desired": "osc", "torque": "torque"}


def validate(name: str, value) -> np.ndarray:
    """The frozen array ``value`` becomes as the gain or target ``name``; raises naming the parameter."""
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ValueError(f"name must be one of {SETTABLE}, got {name!r}")
    return setting.validate(name, value)


def check_mode(mode: str) -> int:
    """The index of ``mode`` in :data:`MODES`; raises ``ValueError`` naming the valid ones."""
    if mode not in _MODE_INDEX:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _MODE_INDEX[mode]


class Commands:
    """The values the law reads this cycle, one named field each.

    Fields hold frozen arrays and are replaced whole, never written into, so a
    reader on another thread sees either the old array or the new one.
    ``dq_desired`` is not settable: it is the velocity of a running ``move()``
    (zero otherwise).
    """

    __slots__ = ("kp", "kd", "ee_kp", "ee_kd", "null_kp", "null_kd", "q_desired", "dq_desired", "ee_desired",
                 "torque", "zero7", "listener")

    def __init__(self) -> None:
        #: Called after every assignment (the Cycle pushes the values to a kernel that serves the cycles).
        self.listener = None
        for setting in TABLE:
            setattr(self, setting.name, setting.validate(setting.name, setting.default))
        self.zero7 = validation.vector("dq_desired", np.zeros(7), 7)
        self.dq_desired = self.zero7
        self.torque = self.zero7

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name != "listener" and self.listener is not None:
            self.listener()

    def retarget(self, q: np.ndarray, ee: np.ndarray) -> None:
        """Targets at the given pose, zero velocity and torque: a switch without a jump."""
        self.q_desired = validation.vector("q_desired", q, 7)
        self.dq_desired = self.zero7
        self.ee_desired = validation.pose("ee_desired", ee)
        self.torque = self.zero7
