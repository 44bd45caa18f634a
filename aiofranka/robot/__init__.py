"""The seam to the arm: every path to libfranka.

:class:`Robot` (the connection), :class:`RobotState` and
:class:`StateBuffer` (the state), :mod:`.errors` (pylibfranka's exceptions
translated), :mod:`._layout` and :mod:`._abi` (what the GIL-free rescue
thread relies on). See docs/architecture.md.
"""

from ._robot import Robot
from .state import RobotState, StateBuffer

__all__ = ["Robot", "RobotState", "StateBuffer"]
