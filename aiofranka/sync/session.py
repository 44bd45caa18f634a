"""A plain, thread-based observe → policy → act loop at a fixed rate.

:class:`Session` (and :func:`run`) runs ``robot.act(policy(robot.observe()))``
in a daemon thread, paced by a :class:`~aiofranka.Pacer`, and reports how
steady the rate was as a frozen :class:`~aiofranka.SessionStats`. See
docs/session.md.

>>> import numpy as np
>>> import aiofranka
>>> class Point:
...     def reset(self): self.x = np.zeros(1)
...     def observe(self): return {"x": self.x}
...     def act(self, action): self.x = self.x + action
>>> stats = aiofranka.run(Point(), lambda obs: 0.01 * (1.0 - obs["x"]),
...                       rate_hz=100, duration=0.2, warmup_s=0.0)
>>> stats.iterations > 0
True
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Optional

from .. import validation
from ..exceptions import SessionLoopError, SessionStateError
from ..pacing import Pacer
from ..stats import SessionStats

__all__ = ["Session", "run"]


def _refuse_in_event_loop(method: str) -> None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # never imported: no event loop can be running
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SessionStateError(
        f"Session.{method}() blocks, and it was called from the thread of a running asyncio event loop, "
        f"which it would stall (or deadlock); call it from a plain thread, e.g. "
        f"`await asyncio.to_thread(session.{method})`, or use the async Controller instead"
    )


def _tensors_to_numpy(value: Any, tensor: type) -> Any:
    if isinstance(value, tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {key: _tensors_to_numpy(item, tensor) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_tensors_to_numpy(item, tensor) for item in value)
    return value


class Session:
    """Runs ``robot.act(policy(robot.observe()))`` at ``rate_hz`` in a daemon thread.

    ``robot`` is any object with ``observe() -> dict``, ``act(action)`` and
    ``reset()``; ``policy`` maps the observation dict to an action: numpy
    arrays, or torch tensors (when torch has been imported by the program,
    tensors, also inside a dict, list or tuple, are converted to numpy
    before ``act``; aiofranka never imports torch itself).

    * :meth:`start` resets the robot, waits ``warmup_s`` seconds, then starts
      the control thread (named ``"aiofranka-session"``) and returns.
    * :meth:`stop` ends the loop after the current step and joins the thread
      for up to ``join_timeout`` seconds. It is idempotent; a stopped
      Session cannot be started again.
    * :meth:`run` starts (if needed), blocks for ``duration`` seconds (counted
      after the warm-up) or, with ``None``, until :meth:`stop` or Ctrl+C,
      stops, and returns the :class:`~aiofranka.SessionStats`. Ctrl+C stops cleanly and
      returns the figures rather than raising ``KeyboardInterrupt``.
    * If ``observe``, the policy or ``act`` raises, the loop ends and the
      exception is kept: :meth:`check_health` (and :meth:`run`, and leaving
      the ``with`` block) raise :class:`~aiofranka.SessionLoopError` from it.
    * ``step_count``, ``is_running`` and ``stats`` can be read from any thread.
    * ``start``, ``stop`` and ``run`` block, so they refuse
      (:class:`~aiofranka.SessionStateError`) to run on the thread of a
      running asyncio event loop.

    Pacing is a :class:`~aiofranka.Pacer` (absolute deadlines, a coarse sleep then a
    ``spin_s`` spin, no catch-up after an overrun); ``window`` is the number
    of periods the jitter figures cover. The control thread drops a
    real-time scheduling policy it may have inherited (``SCHED_FIFO`` after
    a ``pylibfranka.Robot`` was created), so it never outranks a 1 kHz loop.

    >>> import numpy as np
    >>> class Point:
    ...     def reset(self): self.x = np.zeros(2)
    ...     def observe(self): return {"x": self.x}
    ...     def act(self, action): self.x = self.x + action
    >>> with Session(Point(), lambda obs: -0.1 * obs["x"] + 0.01, rate_hz=100, warmup_s=0.0) as session:
    ...     time.sleep(0.1)
    >>> session.step_count > 0, session.is_running
    (True, False)
    """

    def __init__(
        self,
        robot: Any,
        policy: Callable[[dict], Any],
        rate_hz: float = 50,
        warmup_s: float = 0.5,
        *,
        spin_s: float = 0.0012,
        window: int = 10_000,
        join_timeout: float = 2.0,
    ) -> None:
        missing = [name for name in ("observe", "act", "reset") if not callable(getattr(robot, name, None))]
        if missing:
            raise TypeError(f"robot must have observe(), act(action) and reset() methods; "
                            f"{type(robot).__name__} lacks {', '.join(missing)}")
        if not callable(policy):
            raise TypeError(f"policy must be callable (observation dict -> action), got {policy!r}")
        self._warmup = validation.real("warmup_s", warmup_s, minimum=0.0)
        self._join_timeout = validation.real("join_timeout", join_timeout, minimum=0.0, strict=True)
        self._stop_event = threading.Event()
        self._finished = threading.Event()
        self._pacer = Pacer(rate_hz, spin_s=spin_s, window=window, sleep=self._stop_event.wait)
        self._robot = robot
        self._policy = policy
        self._lock = threading.Lock()
        self._state = "new"  # new -> starting -> running -> stopped
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._steps = 0

    # ---- figures ---------------------------------------------------------

    @property
    def rate_hz(self) -> float:
        return self._pacer.rate_hz

    @property
    def step_count(self) -> int:
        """Steps (observe → policy → act) completed so far."""
        return self._steps  # one writer (the control thread); reading an int is atomic

    @property
    def is_running(self) -> bool:
        """True from the end of :meth:`start` until the loop ends (stop or error)."""
        return self._state == "running" and not self._finished.is_set()

    @property
    def stats(self) -> SessionStats:
        """A frozen snapshot of the pacing figures (see :class:`~aiofranka.SessionStats`)."""
        return self._pacer.stats

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Reset the robot, wait ``warmup_s``, start the control thread."""
        _refuse_in_event_loop("start")
        with self._lock:
            if self._state == "stopped":
                raise SessionStateError("this Session was stopped and cannot be started again; create a new Session")
            if self._state != "new":
                raise SessionStateError("this Session is already started")
            self._state = "starting"
        try:
            from .. import _os  # noqa: F401 - imported here, not in the first period

            self._robot.reset()
            end = time.perf_counter() + self._warmup
            while (left := end - time.perf_counter()) > 0.0:
                if self._stop_event.wait(left):  # stop() during the warm-up
                    break
        except BaseException:
            with self._lock:
                if self._state == "starting":
                    self._state = "new"
            raise
        with self._lock:
            if self._state != "starting":  # stop() was called meanwhile
                return
            self._thread = threading.Thread(target=self._loop, name="aiofranka-session", daemon=True)
            self._state = "running"
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop and join its thread (idempotent); ``TimeoutError`` if it does not end in time."""
        if threading.current_thread() is self._thread:  # the policy (or robot) stops its own session
            self._stop_event.set()
            return
        _refuse_in_event_loop("stop")
        with self._lock:
            self._state = "stopped"
            thread = self._thread
        self._stop_event.set()
        if thread is None:
            self._finished.set()
            return
        thread.join(self._join_timeout)
        if thread.is_alive():
            raise TimeoutError(
                f"the session's control thread did not end within join_timeout={self._join_timeout} s: "
                f"a step (observe, policy or act) is still running; it is a daemon thread and will not "
                f"keep the process alive"
            )

    def run(self, duration: Optional[float] = None) -> SessionStats:
        """Start if needed, block for ``duration`` s (``None``: until stop or Ctrl+C), stop, return the stats."""
        _refuse_in_event_loop("run")
        if duration is not None:
            duration = validation.real("duration", duration, minimum=0.0)
        try:
            if self._state in ("new", "stopped"):
                self.start()  # refuses a stopped Session
            self._finished.wait(duration)
        except KeyboardInterrupt:
            pass  # Ctrl+C: stop cleanly and report
        finally:
            self.stop()
        self.check_health()
        return self.stats

    def check_health(self) -> None:
        """Raise :class:`~aiofranka.SessionLoopError` (from the original exception) if the loop failed."""
        error = self._error
        if error is not None:
            raise SessionLoopError(f"the session's control loop failed: {type(error).__name__}: {error}") from error

    def __enter__(self) -> "Session":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
            self.check_health()
            return
        try:  # never mask the body's exception
            self.stop()
        except Exception as stop_error:  # noqa: BLE001
            if hasattr(exc, "add_note"):
                exc.add_note(f"while stopping the Session: {stop_error!r}")

    def __repr__(self) -> str:
        return (f"<Session {self._state} rate_hz={self.rate_hz!r} steps={self._steps} "
                f"robot={type(self._robot).__name__}>")

    # ---- the control thread ----------------------------------------------

    def _loop(self) -> None:
        from .._os import demote_to_normal

        demote_to_normal()
        observe = self._robot.observe
        act = self._robot.act
        policy = self._policy
        pacer = self._pacer
        stopping = self._stop_event.is_set
        modules = sys.modules
        try:
            pacer.reset()
            while not stopping():
                action = policy(observe())
                torch = modules.get("torch")
                if torch is not None:
                    tensor = getattr(torch, "Tensor", None)
                    if tensor is not None:
                        action = _tensors_to_numpy(action, tensor)
                act(action)
                self._steps += 1
                if pacer.wait() is None:
                    break
        except BaseException as exc:  # noqa: BLE001 - kept for check_health()
            self._error = exc
        finally:
            self._finished.set()


def run(
    robot: Any,
    policy: Callable[[dict], Any],
    rate_hz: float = 50,
    duration: Optional[float] = None,
    warmup_s: float = 0.5,
) -> SessionStats:
    """Run ``policy`` on ``robot`` at ``rate_hz`` for ``duration`` s (``None``: until Ctrl+C).

    The same as ``Session(robot, policy, rate_hz, warmup_s).run(duration)``:
    resets the robot, waits ``warmup_s``, runs the loop in a thread, and
    returns its :class:`~aiofranka.SessionStats`. An exception from the loop is raised
    as :class:`~aiofranka.SessionLoopError` from it.

    >>> import numpy as np
    >>> class Still:
    ...     def reset(self): pass
    ...     def observe(self): return {"q": np.zeros(7)}
    ...     def act(self, action): pass
    >>> stats = run(Still(), lambda obs: obs["q"], rate_hz=50, duration=0.1, warmup_s=0.0)
    >>> stats.iterations > 0, stats.target_period_s
    (True, 0.02)
    """
    return Session(robot, policy, rate_hz, warmup_s).run(duration)
