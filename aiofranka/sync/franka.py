"""A Franka arm for :class:`~aiofranka.Session`: observe, act and reset over a running controller."""

from __future__ import annotations

import asyncio

import numpy as np

from .. import validation
from ..exceptions import ControllerStateError, SessionStateError
from ..loop import command

__all__ = ["Franka"]

#: What an action array sets, and the mode that uses it.
_ACTIONS = command.ACTION_MODES


def _rotation_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix."""
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-300))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
        q[3] = (r[k, j] - r[j, k]) / s
    if q[3] < 0.0:
        q = -q
    return q / np.linalg.norm(q)


def _to_numpy(value):
    """A numpy array from a numpy array, a sequence or a torch tensor (moved to the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return value


class Franka:
    """The robot protocol of :class:`~aiofranka.Session` (``observe``, ``act``, ``reset``) for an FR3.

    ``controller`` is a started :class:`~aiofranka.FrankaRemoteController`
    (server mode: the natural partner of a thread-based Session), or a started
    :class:`~aiofranka.Controller` whose event loop runs in another thread
    (each call is then handed to that loop and waited for).

    * ``observe()`` returns ``q``, ``dq`` (7,), ``ee`` (4x4 pose in the base
      frame), ``ee_pos`` (3,), ``ee_quat`` (x, y, z, w), ``tau_ext`` (7,) and
      ``time_s`` (robot clock), all numpy.
    * ``act(action)``: an array (numpy, sequence or torch tensor) sets the
      attribute named by ``action`` (``"q_desired"``, default, ``"ee_desired"``
      or ``"torque"``); a dict sets each named gain or target. Values are
      validated here, so a bad action raises with the parameter's name.
    * ``reset()``: moves to ``reset_q`` at ``reset_speed`` when one is given,
      then switches to the mode the action needs (``q_desired``: impedance,
      ``ee_desired``: osc, ``torque``: torque), re-targeted to where the arm is.

    Example::

        import numpy as np
        import aiofranka
        from aiofranka import Franka, FrankaRemoteController

        def policy(obs):
            return obs["q"] + np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01])

        if __name__ == "__main__":
            with FrankaRemoteController() as ctl:
                stats = aiofranka.run(Franka(ctl), policy, rate_hz=30, duration=2)
                print(stats.jitter.p99_us)
    """

    def __init__(self, controller, *, action: str = "q_desired", reset_q=None, reset_speed: float = 0.3,
                 timeout: float = 2.0) -> None:
        from ..loop.controller import Controller
        from .remote import FrankaRemoteController

        if isinstance(controller, FrankaRemoteController):
            self._local = False
        elif isinstance(controller, Controller):
            self._local = True
        else:
            raise TypeError("controller must be an aiofranka.FrankaRemoteController or Controller, "
                            f"got {type(controller).__name__}")
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {tuple(_ACTIONS)}, got {action!r}")
        self._controller = controller
        self._action = action
        self._reset_q = None if reset_q is None else validation.joint_positions("reset_q", reset_q)
        self._reset_speed = validation.positive("reset_speed", reset_speed, upper=1.0)
        self._timeout = validation.positive("timeout", timeout, upper=3600.0)
        self._validate = command.validate

    @property
    def controller(self):
        """The controller this adapter drives."""
        return self._controller

    def _on_loop(self, fn, *args, timeout: float | None = None):
        controller = self._controller
        if controller.running and asyncio._get_running_loop() is controller.loop:
            raise SessionStateError("Franka blocks until the controller's event loop answers, and it was called "
                                    "from that loop's own thread; run the Session from another thread")
        return controller.call_from_thread(fn, *args, timeout=timeout or self._timeout)

    def _require_running(self) -> None:
        if not self._controller.running:
            raise ControllerStateError("the controller is not running; start it before the session")

    # -- the Session protocol ------------------------------------------------

    def observe(self) -> dict:
        """Joint state, end-effector pose and external torques, from the latest state."""
        if self._local:
            state = self._on_loop(getattr, self._controller, "state")
        else:
            state = self._controller.state
        ee = state.ee
        return {
            "q": state.q,
            "dq": state.dq,
            "ee": ee,
            "ee_pos": ee[:3, 3].copy(),
            "ee_quat": _rotation_to_quaternion(ee[:3, :3]),
            "tau_ext": state.tau_ext,
            "time_s": state.time_ms / 1000.0,
        }

    def act(self, action) -> None:
        """Set the controller's target(s) from ``action`` (validated first)."""
        if isinstance(action, dict):
            items = [(name, self._validate(name, _to_numpy(value))) for name, value in action.items()]
        else:
            items = [(self._action, self._validate(self._action, _to_numpy(action)))]
        controller = self._controller
        if self._local:
            # Validated above, in this thread: the loop only swaps the arrays in.
            self._on_loop(lambda: [controller.assign(name, value) for name, value in items])
        else:
            for name, value in items:
                setattr(controller, name, value)

    def reset(self) -> None:
        """Move to ``reset_q`` (if given), then switch to the action's mode at the current pose."""
        self._require_running()
        controller = self._controller
        mode = _ACTIONS[self._action]
        if self._local:
            if self._reset_q is not None:
                self._on_loop(lambda: controller.move(self._reset_q, speed=self._reset_speed), timeout=120.0)
            self._on_loop(controller.switch, mode)
        else:
            if self._reset_q is not None:
                controller.move(self._reset_q, speed=self._reset_speed)
            controller.switch(mode)

    def __repr__(self) -> str:
        return f"<Franka action={self._action!r} over {self._controller!r}>"
