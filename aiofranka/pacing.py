"""Pacing a loop to deadlines, with one rule for the grid and one for a missed deadline.

:class:`DeadlineGrid` is that rule, pure (no clock, no sleep): the :class:`Pacer`
paces a thread with it on the wall clock (a coarse sleep, then a short spin), and
``Controller.set_freq`` paces ``set()`` with it on the robot clock.
:class:`FakeClock` is virtual time, so pacing logic is tested in zero wall time.
See docs/session.md#pacing-pacer.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from . import validation
from .stats import SampleRing, SessionStats, Summary

__all__ = ["DeadlineGrid", "FakeClock", "Pacer"]

_NS = 1_000_000_000


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


#: The rules :class:`DeadlineGrid` knows for a missed deadline.
OVERRUN_RULES = ("restart", "skip")


class DeadlineGrid:
    """Deadlines one ``period`` apart, and a named rule for a missed one.

    :attr:`due` is when the next iteration is due. A loop waits until then,
    or, when its work ran past it (an *overrun*), starts at once; either way
    it then calls :meth:`next_due` with the time ``now`` the iteration
    started, and the grid moves on to ``due + period``. So the grid does not
    drift, and an iteration that starts late (a sleep that woke up late)
    shows as jitter without moving it. A deadline is *missed* when the work
    ended after it (``next_due(now, overran=True)``), or when the iteration
    started so late that the following deadline has passed too. Then
    ``on_overrun`` says where the grid goes:

    * ``"restart"``: to ``now + period``, the grid restarts from now
      (the :class:`Pacer`);
    * ``"skip"``: to the first tick of the grid after ``now``, dropping the
      missed ticks and keeping the grid's phase (``Controller.set_freq``,
      whose grid lies on the robot clock). With this rule ``overran`` makes
      no difference.

    Neither rule bursts back-to-back iterations to catch up. Times are in the
    caller's unit (seconds for the Pacer, robot milliseconds for
    ``set_freq``). The grid is pure: it reads no clock and never sleeps.

    >>> grid = DeadlineGrid(10.0, on_overrun="skip", due=0.0)
    >>> grid.next_due(0.0), grid.next_due(13.0), grid.next_due(47.0, overran=True)
    (10.0, 20.0, 50.0)
    >>> grid = DeadlineGrid(10.0, on_overrun="restart", due=0.0)
    >>> grid.next_due(0.0), grid.next_due(13.0), grid.next_due(47.0, overran=True)
    (10.0, 20.0, 57.0)
    """

    __slots__ = ("_period", "_restart", "_due")

    def __init__(self, period: float, *, on_overrun: str, due: float = 0.0) -> None:
        self._period = validation.real("period", period, minimum=0.0, strict=True)
        if on_overrun not in OVERRUN_RULES:
            raise ValueError(f"on_overrun must be one of {OVERRUN_RULES}, got {on_overrun!r}")
        self._restart = on_overrun == "restart"
        self._due = float(due)

    @property
    def period(self) -> float:
        return self._period

    @property
    def on_overrun(self) -> str:
        return "restart" if self._restart else "skip"

    @property
    def due(self) -> float:
        """When the next iteration is due."""
        return self._due

    def reset(self, due: float) -> None:
        """Start the grid again: the next iteration is due at ``due``."""
        self._due = float(due)

    def next_due(self, now: float, *, overran: bool = False) -> float:
        """The iteration due at :attr:`due` started at ``now``: move on, return the new :attr:`due`.

        ``overran``: the work ended after :attr:`due`, so the iteration
        started at once instead of waiting.
        """
        period = self._period
        following = self._due + period
        if following > now and not (overran and self._restart):
            self._due = following
        elif self._restart:
            self._due = now + period
        else:
            self._due = following + period * math.ceil((now - following) / period + 1e-9)
        return self._due

    def __repr__(self) -> str:
        return f"DeadlineGrid(period={self._period!r}, on_overrun={self.on_overrun!r}, due={self._due!r})"


class FakeClock:
    """Virtual time for a :class:`Pacer` or a :class:`DeadlineGrid` (a testing aid, like trio's ``MockClock``).

    The instance is the clock (call it for the time, in seconds, or in the
    unit the code under test uses) and :meth:`sleep` advances it instantly,
    so rate and jitter logic runs in zero wall time. Time never goes back.

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
        self._now = validation.real("start", start)
        self._step = validation.real("read_step_s", read_step_s, minimum=0.0)
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
        self.advance(seconds)
        self.sleeps.append(seconds)


class Pacer:
    """Paces a loop at ``rate_hz`` with absolute deadlines, and keeps its figures.

    The schedule starts when the Pacer is created (or :meth:`reset`): that
    instant is the start of the first iteration, and deadline *k* is *k*
    periods later. Call :meth:`wait` at the end of each iteration's work; it
    returns when the next iteration is due:

    1. If the deadline has already passed (``clock() > deadline``), the
       iteration **overran** (see :class:`~aiofranka.SessionStats`). ``wait`` returns at
       once and the schedule restarts from now: the missed deadlines are
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

    That is a :class:`DeadlineGrid` with ``on_overrun="restart"``.

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

    The figures (:attr:`stats`) are recorded by ``wait`` into a preallocated
    ring of the newest ``window`` periods; ``stats`` may be read from any
    thread. ``clock`` (seconds, monotonic) and ``sleep`` are injectable: with
    a :class:`FakeClock` the logic runs in zero wall time.

    >>> pacer = Pacer(200)               # 5 ms periods, 1.2 ms spin
    >>> for _ in range(10):
    ...     lateness = pacer.wait()      # the work would go before this
    >>> pacer.stats.iterations
    10
    """

    __slots__ = ("_period", "_period_ns", "_rate", "_spin", "_clock", "_spin_until", "_sleep", "_ring", "_lock",
                 "_grid", "_last_start", "_iterations", "_overruns")

    def __init__(
        self,
        rate_hz: float,
        *,
        spin_s: float = 0.0012,
        window: int = 10_000,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self._rate = validation.real("rate_hz", rate_hz, minimum=0.0, strict=True)
        self._spin = validation.real("spin_s", spin_s, minimum=0.0)
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
        self._grid = DeadlineGrid(self._period, on_overrun="restart")
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
        return self._grid.due

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
            self._grid.reset(now + self._period)
            self._last_start = now
            self._iterations = 0
            self._overruns = 0
            self._ring.clear()

    def wait(self) -> Optional[float]:
        """Return when the next iteration is due; the lateness in seconds (``None`` if abandoned)."""
        clock = self._clock
        grid = self._grid
        deadline = grid.due
        now = clock()
        overrun = now > deadline
        if not overrun:
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
        grid.next_due(now, overran=overrun)
        period_ns = round((now - self._last_start) * _NS)
        with self._lock:
            self._ring.push(period_ns)
            self._iterations += 1
            if overrun:
                self._overruns += 1
        self._last_start = now
        return now - deadline

    @property
    def stats(self) -> SessionStats:
        """A frozen snapshot of the figures (safe from any thread)."""
        with self._lock:
            periods = self._ring.values()
            iterations = self._iterations
            overruns = self._overruns
        if periods.size == 0:
            return SessionStats(iterations, overruns, self._period, float("nan"), Summary.empty())
        return SessionStats(
            iterations=iterations,
            overruns=overruns,
            target_period_s=self._period,
            avg_period_s=float(periods.mean()) / _NS,
            jitter=Summary.from_ns(np.abs(periods - self._period_ns)),
        )

    def __repr__(self) -> str:
        return f"Pacer(rate_hz={self._rate!r}, spin_s={self._spin!r}, iterations={self._iterations})"
