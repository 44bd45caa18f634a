"""A plain, thread-based observe → policy → act loop at a fixed rate.

Not every program wants asyncio. A :class:`Session` runs the classic policy
loop of a learning script in a daemon thread::

    observation = robot.observe()
    action = policy(observation)
    robot.act(action)
    ... wait for the next deadline ...

at a fixed rate (50 Hz by default), and reports how steady that rate was as a
frozen :class:`SessionStats`. ``robot`` is any object with ``observe() ->
dict``, ``act(action)`` and ``reset()``; ``policy`` is any callable from the
observation to an action.

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

Three pieces, usable on their own:

* :class:`Pacer`: the pacing mechanism, absolute deadlines, a coarse sleep
  followed by a short spin, no catch-up burst after an overrun. It also keeps
  the period figures (in a preallocated :class:`~aiofranka.timing.SampleRing`).
* :class:`SessionStats`: a frozen snapshot of those figures.
* :class:`Session` and :func:`run`: the loop in a thread, with a lifecycle
  (``start``/``stop``/``run``, context manager) and error reporting
  (:meth:`Session.check_health`).

:class:`FakeClock` is a testing aid: virtual time for a :class:`Pacer`, so
pacing logic can be tested in zero wall time.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from .timing import SampleRing

__all__ = ["FakeClock", "Pacer", "Session", "SessionStats", "run"]

_NS = 1_000_000_000


# --------------------------------------------------------------------------
# validation (at the edge, with the parameter named)
# --------------------------------------------------------------------------

def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    result = _real(name, value)
    if result <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return result


def _non_negative(name: str, value: Any) -> float:
    result = _real(name, value)
    if result < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return result


def _window(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"window must be an integer >= 1, got {value!r}")
    return int(value)


def _c_spin_until():
    """The C kernel's GIL-free spin, or None where the extension is unavailable."""
    try:
        from ._kernel import spin_until
    except ImportError:  # pragma: no cover - the extension is built at install
        return None
    return spin_until


def _refuse_in_event_loop(method: str) -> None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # never imported: no event loop can be running
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"Session.{method}() blocks, and it was called from the thread of a running asyncio event loop, "
        f"which it would stall (or deadlock); call it from a plain thread, e.g. "
        f"`await asyncio.to_thread(session.{method})`, or use the async Controller instead"
    )


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SessionStats:
    """A frozen snapshot of a paced loop's figures.

    * ``iterations``: periods measured since the loop started, i.e. calls of
      :meth:`Pacer.wait` that returned normally (not abandoned by a stop).
      For a :class:`Session` this is ``step_count``, or one less when the
      last step's wait was cut short by ``stop()``.
    * ``overruns``: iterations that could not start on time. Precisely:
      an iteration overruns when :meth:`Pacer.wait` is entered after the
      deadline has passed (``clock() > deadline``), i.e. the work of the
      iteration (observe, policy, act, plus whatever preempted it) took
      longer than the time left before the next iteration was due. An
      iteration that ends exactly on the deadline is not an overrun, and
      neither is a sleep that woke up late (that shows as jitter).
    * ``target_period_s``: ``1 / rate_hz``.
    * ``avg_period_s``: mean period over the window.
    * ``p50_jitter_s``, ``p95_jitter_s``, ``p99_jitter_s``,
      ``max_jitter_s``: percentiles (numpy's default, linear interpolation)
      and maximum of the jitter over the window, where the jitter of an
      iteration is ``|actual period - target period|`` and its actual period
      is the time from its start to the start of the next iteration.

    ``iterations`` and ``overruns`` count since the start; the period and
    jitter figures cover the newest ``window`` periods only (10,000 by
    default). With no period measured yet they are ``nan``. Periods are
    stored as integer nanoseconds.

    >>> stats = SessionStats(3, 0, 0.02, 0.02, 0.0, 0.0, 0.0, 0.0)
    >>> stats.to_dict()["iterations"]
    3
    """

    iterations: int
    overruns: int
    target_period_s: float
    avg_period_s: float
    p50_jitter_s: float
    p95_jitter_s: float
    p99_jitter_s: float
    max_jitter_s: float

    def to_dict(self) -> dict:
        """The figures as a plain ``dict`` (e.g. for JSON or a logger)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"{self.iterations} iterations, {self.overruns} overruns, period "
                f"{1e3 * self.avg_period_s:.3f} ms (target {1e3 * self.target_period_s:.3f} ms), jitter "
                f"p50 {1e6 * self.p50_jitter_s:.1f} p95 {1e6 * self.p95_jitter_s:.1f} "
                f"p99 {1e6 * self.p99_jitter_s:.1f} max {1e6 * self.max_jitter_s:.1f} us")


# --------------------------------------------------------------------------
# pacing
# --------------------------------------------------------------------------

class FakeClock:
    """Virtual time for a :class:`Pacer` (a testing aid, like trio's ``MockClock``).

    The instance is the clock (call it for the time, in seconds) and
    :meth:`sleep` advances it instantly, so rate and jitter logic runs in
    zero wall time. Time never goes back.

    It starts at 1000 s rather than 0: differences of nearby floats are then
    exact, so a sleep of ``deadline - now`` lands exactly on ``deadline``.
    Each reading advances the clock by ``read_step_s`` (0 by default); give
    it a small value when the code under test spins on the clock (a
    :class:`Pacer` with ``spin_s > 0``), or the spin never ends.

    >>> clock = FakeClock()
    >>> pacer = Pacer(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    >>> clock.advance(0.005)          # 5 ms of work
    >>> pacer.wait()                  # sleeps the remaining 15 ms, in no time
    0.0
    >>> round(clock() - 1000.0, 6)
    0.02
    """

    def __init__(self, start: float = 1000.0, *, read_step_s: float = 0.0) -> None:
        self._now = _real("start", start)
        self._step = _non_negative("read_step_s", read_step_s)
        self.sleeps: list[float] = []
        """Every duration passed to :meth:`sleep`, in order."""

    def __call__(self) -> float:
        now = self._now
        self._now = now + self._step
        return now

    @property
    def now(self) -> float:
        """The current time, without advancing it."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (work, a stall)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0 (time cannot go back), got {seconds!r}")
        self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Like ``time.sleep``: advance by ``seconds``, at once."""
        self.sleeps.append(seconds)
        self.advance(seconds)


class Pacer:
    """Paces a loop at ``rate_hz`` with absolute deadlines, and keeps its figures.

    The schedule starts when the Pacer is created (or :meth:`reset`): that
    instant is the start of the first iteration, and deadline *k* is *k*
    periods later. Call :meth:`wait` at the end of each iteration's work; it
    returns when the next iteration is due:

    1. If the deadline has already passed (``clock() > deadline``), the
       iteration **overran** (see :class:`SessionStats`). ``wait`` returns at
       once and the schedule moves on from now: the missed deadlines are
       dropped and the next deadline is ``now + period``. So after a stall of
       several periods the loop runs one late iteration and then full
       periods again; it never bursts back-to-back iterations to catch up.
    2. Otherwise it sleeps coarsely until ``deadline - spin_s`` with
       ``sleep``, then spins on ``clock`` until the deadline (the OS wakes a
       sleeper some 50-100 us late, or a whole scheduler tick on a loaded
       machine; the spin absorbs that). With ``spin_s=0`` it is plain sleep
       pacing: one ``sleep(deadline - now)``, no spin. The next deadline is
       ``deadline + period``, unless the sleep woke up so late that this too
       has passed, in which case it is ``now + period`` (no burst either).

    ``wait`` returns the lateness in seconds: how long after its deadline the
    next iteration starts (for an overrun, how far past the deadline the work
    ran). Wall-clock costs: the spin holds a core for up to
    ``spin_s`` each period, so at rates above ``1 / spin_s`` (833 Hz by
    default) it spins the whole period. With the default clock the spin runs
    in C with the GIL released; with an injected clock it is a Python loop
    that holds the GIL. A sleeping thread also needs the GIL
    back to wake up, which another busy Python thread can delay by up to the
    interpreter's switch interval (5 ms by default).

    If ``sleep`` returns a true value, as ``threading.Event.wait`` does once
    its event is set, the wait is abandoned: ``wait`` returns ``None`` at
    once, without spinning, recording a period or advancing the schedule. A
    :class:`Session` uses this to stop promptly at any rate.

    The figures (:meth:`stats`) are recorded by ``wait`` into a preallocated
    ring of the newest ``window`` periods; ``stats()`` may be called from any
    thread. ``clock`` (seconds, monotonic) and ``sleep`` are injectable: with
    a :class:`FakeClock` the logic runs in zero wall time.

    >>> pacer = Pacer(200)               # 5 ms periods, 1.2 ms spin
    >>> for _ in range(10):
    ...     lateness = pacer.wait()      # the work would go before this
    >>> pacer.stats().iterations
    10
    """

    __slots__ = ("_period", "_period_ns", "_rate", "_spin", "_clock", "_spin_until", "_sleep", "_ring", "_lock",
                 "_deadline", "_last_start", "_iterations", "_overruns")

    def __init__(
        self,
        rate_hz: float,
        *,
        spin_s: float = 0.0012,
        window: int = 10_000,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self._rate = _positive("rate_hz", rate_hz)
        self._spin = _non_negative("spin_s", spin_s)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if not callable(sleep):
            raise TypeError(f"sleep must be callable, got {sleep!r}")
        self._period = 1.0 / self._rate
        self._period_ns = round(self._period * _NS)
        self._clock = clock
        # With the default clock the spin runs in C with the GIL released: a
        # Python spin holding the GIL kept this process's other threads out
        # for seconds at a time (time.sleep(3) in the main thread took 9.7 s
        # beside a 1 kHz Session).
        self._spin_until = _c_spin_until() if clock is time.perf_counter else None
        self._sleep = sleep
        self._ring = SampleRing(_window(window))
        self._lock = threading.Lock()
        self.reset()

    @property
    def rate_hz(self) -> float:
        return self._rate

    @property
    def period_s(self) -> float:
        return self._period

    @property
    def spin_s(self) -> float:
        return self._spin

    @property
    def deadline(self) -> float:
        """When the next iteration is due, in ``clock`` seconds."""
        return self._deadline

    @property
    def iterations(self) -> int:
        return self._iterations

    @property
    def overruns(self) -> int:
        return self._overruns

    def reset(self) -> None:
        """Restart the schedule now (the first deadline is one period away) and clear the figures."""
        now = self._clock()
        with self._lock:
            self._deadline = now + self._period
            self._last_start = now
            self._iterations = 0
            self._overruns = 0
            self._ring.clear()

    def wait(self) -> Optional[float]:
        """Return when the next iteration is due; the lateness in seconds (``None`` if abandoned)."""
        clock = self._clock
        period = self._period
        deadline = self._deadline
        now = clock()
        overrun = now > deadline
        if overrun:
            self._deadline = now + period
        else:
            spin = self._spin
            if spin > 0.0:
                coarse = deadline - spin - now
                if coarse > 0.0 and self._sleep(coarse):
                    return None
                spin_until = self._spin_until
                if spin_until is not None:
                    now = spin_until(deadline)  # in C, the GIL released
                else:
                    now = clock()
                    while now < deadline:
                        now = clock()
            else:
                if deadline > now and self._sleep(deadline - now):
                    return None
                now = clock()
            following = deadline + period
            self._deadline = following if following > now else now + period
        period_ns = round((now - self._last_start) * _NS)
        with self._lock:
            self._ring.push(period_ns)
            self._iterations += 1
            if overrun:
                self._overruns += 1
        self._last_start = now
        return now - deadline

    def stats(self) -> SessionStats:
        """A frozen snapshot of the figures (safe from any thread)."""
        with self._lock:
            periods = self._ring.values()
            iterations = self._iterations
            overruns = self._overruns
        if periods.size == 0:
            nan = float("nan")
            return SessionStats(iterations, overruns, self._period, nan, nan, nan, nan, nan)
        jitter = np.abs(periods - self._period_ns)
        p50, p95, p99 = np.percentile(jitter, [50, 95, 99])
        return SessionStats(
            iterations=iterations,
            overruns=overruns,
            target_period_s=self._period,
            avg_period_s=float(periods.mean()) / _NS,
            p50_jitter_s=float(p50) / _NS,
            p95_jitter_s=float(p95) / _NS,
            p99_jitter_s=float(p99) / _NS,
            max_jitter_s=float(jitter.max()) / _NS,
        )

    def __repr__(self) -> str:
        return f"Pacer(rate_hz={self._rate!r}, spin_s={self._spin!r}, iterations={self._iterations})"


# --------------------------------------------------------------------------
# the session
# --------------------------------------------------------------------------

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
      stops, and returns the :class:`SessionStats`. Ctrl+C stops cleanly and
      returns the figures rather than raising ``KeyboardInterrupt``.
    * If ``observe``, the policy or ``act`` raises, the loop ends and the
      exception is kept: :meth:`check_health` (and :meth:`run`, and leaving
      the ``with`` block) raise ``RuntimeError`` from it.
    * ``step_count``, ``is_running`` and ``stats`` can be read from any thread.
    * ``start``, ``stop`` and ``run`` block, so they refuse (``RuntimeError``)
      to run on the thread of a running asyncio event loop.

    Pacing is a :class:`Pacer` (absolute deadlines, a coarse sleep then a
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
        self._warmup = _non_negative("warmup_s", warmup_s)
        self._join_timeout = _positive("join_timeout", join_timeout)
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
        """A frozen snapshot of the pacing figures (see :class:`SessionStats`)."""
        return self._pacer.stats()

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Reset the robot, wait ``warmup_s``, start the control thread."""
        _refuse_in_event_loop("start")
        with self._lock:
            if self._state == "stopped":
                raise RuntimeError("this Session was stopped and cannot be started again; create a new Session")
            if self._state != "new":
                raise RuntimeError("this Session is already started")
            self._state = "starting"
        try:
            from . import _os  # noqa: F401 - imported here, not in the first period

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
            duration = _non_negative("duration", duration)
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
        """Raise ``RuntimeError`` (from the original exception) if the loop failed."""
        error = self._error
        if error is not None:
            raise RuntimeError(f"the session's control loop failed: {type(error).__name__}: {error}") from error

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
        from ._os import demote_to_normal

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
    returns its :class:`SessionStats`. An exception from the loop is raised
    as ``RuntimeError`` from it.

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
