"""The simulated Franka Hand: franka-sim's kinematic hand, with fingers that take time to move.

franka-sim's ``FrankaHandSim`` sets the final width at once. The real hand moves its fingers
at the commanded speed and answers when they stop, so a grasp takes a second or more; this
backend does the same (the width the UDP state broadcast shows moves meanwhile), so code
driving the simulator meets the same long blocking calls as on the robot. What stops the
fingers (a virtual object ``object_width`` wide between them) and how a grasp is judged
(libfranka's epsilon band) stay franka-sim's.

Like franka-sim's server, nothing interrupts a command in progress: a ``stop`` is read
after the command has answered (on the real hand ``stop`` does not reliably interrupt a
move either; it ends a grasp's squeeze).
"""

from __future__ import annotations

import time

from franka_sim.gripper.backend import FrankaHandSim, validate_width

__all__ = ["HOMING_SPEED", "TimedHand"]

#: Finger speed of a homing run (m/s): close until blocked, then open fully.
HOMING_SPEED = 0.1
_STEP = 0.002  # s between width updates while the fingers move


class TimedHand(FrankaHandSim):
    """A kinematic Franka Hand whose moves, grasps and homing take |distance| / speed seconds."""

    def _travel(self, target: float, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")  # the server answers kFail
        start = self.width
        duration = abs(target - start) / speed
        began = time.monotonic()
        while True:
            elapsed = time.monotonic() - began
            if elapsed >= duration:
                break
            self.width = start + (target - start) * (elapsed / duration)
            time.sleep(min(_STEP, duration - elapsed))
        self.width = target

    def homing(self) -> bool:
        self.is_grasped = False
        self._travel(self._blocked(0.0), HOMING_SPEED)
        self._travel(self.max_width, HOMING_SPEED)
        return True

    def move(self, width: float, speed: float) -> bool:
        validate_width(width, self.max_width, "move")
        self.is_grasped = False
        self._travel(self._blocked(width), speed)
        return True

    def grasp(self, width: float, epsilon_inner: float, epsilon_outer: float, speed: float,
              force: float) -> bool:
        validate_width(width, self.max_width)
        self.is_grasped = False
        self._travel(self._blocked(0.0), speed)  # close until something stops the fingers
        final = self.width
        self.is_grasped = width - epsilon_inner < final < width + epsilon_outer
        return self.is_grasped

    def stop(self) -> bool:
        # The fingers are at rest when a stop is read (see the module docstring): it only
        # ends the grasp's squeeze, as on the real hand. franka-sim's stub reopens instead.
        self.is_grasped = False
        return True
