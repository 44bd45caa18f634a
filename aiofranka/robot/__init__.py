"""The seam to the arm: every path to libfranka.

:class:`Robot` (the connection), :class:`Gripper` (the Franka Hand, from a
child process), :class:`RobotState` and
:class:`StateBuffer` (the state), :mod:`.errors` (pylibfranka's exceptions
translated), :mod:`._layout` and :mod:`._abi` (what the GIL-free rescue
thread relies on). See docs/architecture.md.
"""

from ._robot import Robot
from .gripper import Gripper, GripperState
from .state import RobotState, StateBuffer

__all__ = ["Gripper", "GripperState", "Robot", "RobotState", "StateBuffer"]
