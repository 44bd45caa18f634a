"""Loop figures: preallocated recorders and frozen percentile snapshots.

A loop records integer nanosecond samples without allocating: the
Controller into :class:`LatencyHistogram` (1 us bins over the whole session,
so a snapshot is cheap enough to take from the event loop), the Session's
pacer into :class:`SampleRing` (the newest N samples, for windowed
statistics). Either turns its samples into a frozen :class:`Summary` on
demand, off the hot path.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from . import validation

__all__ = ["LatencyHistogram", "LoopStats", "SampleRing", "Summary", "WakeupReport", "probe_wakeups"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """Percentiles of a window of samples, in microseconds."""

    count: int
    p50_us: float
    p99_us: float
    max_us: float
    mean_us: float

    @classmethod
    def empty(cls) -> "Summary":
        nan = float("nan")
        return cls(0, nan, nan, nan, nan)

    def __str__(self) -> str:
        return f"p50 {self.p50_us:7.1f}  p99 {self.p99_us:7.1f}  max {self.max_us:8.1f} us"


class SampleRing:
    """A fixed-size ring of int64 samples (nanoseconds) kept for percentiles.

    ``push`` costs one array store and two integer operations; the ring keeps
    the newest ``size`` samples.
    """

    __slots__ = ("_buf", "_size", "_index", "_count")

    def __init__(self, size: int = 60_000) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self._buf = np.zeros(size, dtype=np.int64)
        self._size = size
        self._index = 0
        self._count = 0

    def push(self, value_ns: int) -> None:
        self._buf[self._index] = value_ns
        self._index += 1
        if self._index == self._size:
            self._index = 0
        self._count += 1

    def clear(self) -> None:
        self._index = 0
        self._count = 0

    @property
    def count(self) -> int:
        """Samples pushed since the last clear (may exceed the window)."""
        return self._count

    def values(self) -> np.ndarray:
        """A copy of the samples in the window, oldest first (ns)."""
        n = min(self._count, self._size)
        if n < self._size:
            return self._buf[:n].copy()
        return np.concatenate((self._buf[self._index:], self._buf[: self._index]))

    def summary(self) -> Summary:
        values = self.values()
        if values.size == 0:
            return Summary.empty()
        us = values / 1000.0
        p50, p99 = np.percentile(us, [50, 99])
        return Summary(int(values.size), float(p50), float(p99), float(us.max()), float(us.mean()))


class LatencyHistogram:
    """Durations in 1 us bins up to ``limit_us``, plus the exact maximum.

    ``push`` is one integer division and one array increment; ``summary`` is
    a cumulative sum over the bins, so a snapshot costs tens of microseconds
    whatever the number of samples (a percentile over a long sample window
    costs milliseconds, which would itself stall the event loop). Percentiles
    are exact to the bin width; samples beyond the last bin count in it.
    """

    __slots__ = ("_bins", "_last", "_count", "_max", "_sum")

    def __init__(self, limit_us: int = 20_000) -> None:
        if limit_us <= 0:
            raise ValueError(f"limit_us must be positive, got {limit_us}")
        self._bins = np.zeros(limit_us + 1, dtype=np.int64)
        self._last = limit_us
        self.clear()

    def clear(self) -> None:
        self._bins[:] = 0
        self._count = 0
        self._max = 0
        self._sum = 0

    def push(self, value_ns: int) -> None:
        index = value_ns // 1000
        self._bins[index if index < self._last else self._last] += 1
        self._count += 1
        self._sum += value_ns
        if value_ns > self._max:
            self._max = value_ns

    @property
    def count(self) -> int:
        return self._count

    def summary(self) -> Summary:
        if self._count == 0:
            return Summary.empty()
        cumulative = np.cumsum(self._bins)
        # Same convention as numpy's "lower" percentile, in bin units (+0.5 = bin centre).
        p50 = int(np.searchsorted(cumulative, 0.50 * self._count, side="left"))
        p99 = int(np.searchsorted(cumulative, 0.99 * self._count, side="left"))
        top = self._max / 1000.0
        return Summary(self._count, min(p50 + 0.5, top), min(p99 + 0.5, top), top, self._sum / self._count / 1000.0)


@dataclasses.dataclass(frozen=True)
class LoopStats:
    """A frozen snapshot of a control loop's figures.

    * ``cycles``: cycles the client answered (a command written).
    * ``lost_cycles``: gaps in the robot's millisecond counter between
      consecutive states we read, i.e. states that went unanswered.
    * ``min_success_rate``: the lowest ``control_command_success_rate`` seen
      (fraction of the last 100 commands the robot received).
    * ``compute``: the client's own work per cycle, from ``readOnce``
      returning to ``writeOnce`` being called (the budget Franka specifies;
      the UDP send itself is not included).
    * ``period``: time between consecutive ``readOnce`` returns.
    * ``robot_time_s``: robot time elapsed since the loop started.
    * ``wall_time_s``: wall-clock time elapsed since the loop started.
    * ``read_wait``: time spent blocked in ``readOnce`` per cycle (the GIL is
      held meanwhile: the shorter, the more other threads get).
    * ``wait``: how the loop waits between cycles (``"socket"``, ``"timerfd"`` or ``"yield"``).
    * ``late_wakeups``: cycles whose state was already waiting when the loop
      woke (the wake margin then grows); ``wake_margin_us`` is its current value.
    * ``stalls``, ``longest_stall_ms``, ``culprits``: times the event loop was
      blocked past the stall threshold when a cycle was due, and by what.
    * ``takeovers``, ``guardian_cycles``, ``longest_takeover_ms``: times the
      guardian served cycles for a blocked loop, how many, and the longest run.
    * ``rescue``: ``"on"`` while the rescue thread backs the loop, else
      ``"off"`` or ``"off: <why>"``; ``rescues``, ``rescued_cycles``,
      ``longest_rescue_ms``: times it served cycles while no Python thread
      could (the GIL held elsewhere), how many (counted in ``cycles``), and
      its longest run.
    """

    cycles: int
    lost_cycles: int
    min_success_rate: float
    compute: Summary
    period: Summary
    robot_time_s: float
    wall_time_s: float
    mode: str
    switch_interval_s: float
    read_wait: Summary = dataclasses.field(default_factory=Summary.empty)
    wait: str = "yield"
    late_wakeups: int = 0
    wake_margin_us: float = 0.0
    stalls: int = 0
    longest_stall_ms: float = 0.0
    culprits: tuple = ()
    takeovers: int = 0
    guardian_cycles: int = 0
    longest_takeover_ms: float = 0.0
    rescue: str = "off"
    rescues: int = 0
    rescued_cycles: int = 0
    longest_rescue_ms: float = 0.0

    @property
    def lost_fraction(self) -> float:
        total = self.cycles + self.lost_cycles
        return self.lost_cycles / total if total else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self, title: str = "loop") -> str:
        """A small human-readable table of the figures."""
        rows = [
            ("cycles", f"{self.cycles}"),
            ("lost cycles", f"{self.lost_cycles} ({100 * self.lost_fraction:.3f} %)"),
            ("min success rate", f"{self.min_success_rate:.3f}"),
            ("compute (read->write)", str(self.compute)),
            ("period", str(self.period)),
            ("readOnce wait (GIL held)", str(self.read_wait)),
            ("robot time / wall time", f"{self.robot_time_s:.2f} s / {self.wall_time_s:.2f} s"),
            ("mode / wait", f"{self.mode} / {self.wait} (margin {self.wake_margin_us:.0f} us, "
                            f"{self.late_wakeups} late wakeups)"),
            ("event-loop stalls", f"{self.stalls} (longest {self.longest_stall_ms:.1f} ms)"),
            ("guardian takeovers", f"{self.takeovers} ({self.guardian_cycles} cycles served, "
                                   f"longest {self.longest_takeover_ms:.1f} ms)"),
            ("rescue thread", f"{self.rescue}: {self.rescues} rescues ({self.rescued_cycles} cycles served, "
                              f"longest {self.longest_rescue_ms:.1f} ms)"),
        ]
        rows += [("  culprit", f"{c.count}x, longest {c.longest_ms:.1f} ms: {c.culprit}") for c in self.culprits[:5]]
        width = max(len(name) for name, _ in rows)
        lines = [f"== {title} =="] + [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)


# --------------------------------------------------------------------------- machine probe


@dataclasses.dataclass(frozen=True)
class WakeupReport:
    """What this machine did to a periodic sleeper (see :func:`probe_wakeups`).

    * ``count``: wake-ups measured; ``period_s``: the period asked for.
    * ``priority``: the SCHED_FIFO priority the probe ran at (None: normal
      scheduling).
    * ``lateness``: how late each wake-up was past its deadline (µs).
    * ``late_half_period``: wake-ups later than half a period.
    * ``late_period``: wake-ups later than a whole period. A 1 kHz loop that
      wakes this late has missed a state: against a real robot, whose clock
      runs on while this machine stalls, a loop of any design would lose
      about this many cycles over the same time. (A simulator on the same
      CPUs stalls with them, and charges fewer.)
    """

    count: int
    period_s: float
    priority: int | None
    lateness: Summary
    late_half_period: int
    late_period: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def verdict(self) -> str:
        """One line for a person deciding whether to run a 1 kHz loop here."""
        period_us = self.period_s * 1e6
        if self.late_period:
            return (f"not fit: {self.late_period} of {self.count} wake-ups came more than a period "
                    f"({period_us:.0f} us) late, the worst {self.lateness.max_us / 1000:.1f} ms; against a "
                    f"real robot a loop here loses cycles however it is written (a VM's host, power "
                    f"saving, or no PREEMPT_RT kernel)")
        if self.late_half_period or self.lateness.max_us > 300.0:
            return (f"marginal: no wake-up was a whole period late, but the worst was "
                    f"{self.lateness.max_us:.0f} us against Franka's ~300 us budget for the client's work")
        return f"fit: the worst wake-up was {self.lateness.max_us:.0f} us late"

    def __str__(self) -> str:
        policy = "normal scheduling" if self.priority is None else f"SCHED_FIFO {self.priority}"
        return (f"{self.count} wake-ups every {self.period_s * 1e3:g} ms ({policy}): lateness p50 "
                f"{self.lateness.p50_us:.1f} us, p99 {self.lateness.p99_us:.1f} us, max "
                f"{self.lateness.max_us:.1f} us; {self.late_half_period} later than half a period, "
                f"{self.late_period} later than a period")


def probe_wakeups(duration: float = 10.0, *, period: float = 1e-3, priority: int | None = None,
                  progress: Callable[[float, int], None] | None = None) -> WakeupReport:
    """Measure how late this machine wakes a thread that sleeps to periodic deadlines.

    A helper thread sleeps (``clock_nanosleep`` to absolute deadlines, in C,
    with the GIL released) every ``period`` seconds for ``duration`` seconds,
    and records how late each wake-up was. No Python runs between wake-ups,
    so the figures are the floor under any control loop on this machine: a
    wake-up later than a period is a cycle a 1 kHz loop would lose by itself
    against a real robot.
    Run it before blaming a helper or a policy for lost cycles.

    ``priority`` (1-99) runs the probe thread at ``SCHED_FIFO`` with that
    priority, as libfranka runs its loop thread when it may (80 is what
    :class:`~aiofranka.Robot` uses); it needs root or ``CAP_SYS_NICE``, and
    :class:`PermissionError` says so otherwise. ``None`` uses normal
    scheduling. ``progress(elapsed_s, late_period_so_far)`` is called about
    once a second from the probe thread. Blocks the caller for ``duration``;
    from async code use ``await asyncio.to_thread(probe_wakeups, ...)``.
    """
    from . import _kernel
    from ._os import demote_to_normal, promote

    duration = validation.positive("duration", duration, upper=3600.0)
    period = validation.positive("period", period, upper=1.0)
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 99:
            raise ValueError(f"priority must be an int from 1 to 99 or None, got {priority!r}")
    period_ns = max(1, int(round(period * 1e9)))
    count = max(1, int(duration / period))
    lateness = np.zeros(count, dtype=np.int64)
    chunk = max(1, int(round(1.0 / period)))  # about a second per C call
    outcome: list[BaseException] = []

    def probe() -> None:
        try:
            if priority is None:
                demote_to_normal()
            else:
                try:
                    promote(priority)
                except PermissionError as exc:
                    raise PermissionError(
                        f"priority={priority} needs SCHED_FIFO, which this user may not set "
                        f"(run as root, grant CAP_SYS_NICE, or pass priority=None)") from exc
            start = time.monotonic_ns()
            for begin in range(0, count, chunk):
                part = lateness[begin:begin + chunk]
                _kernel.wake_probe(part, start + begin * period_ns, period_ns)
                if progress is not None:
                    done = begin + part.size
                    progress(done * period, int(np.count_nonzero(lateness[:done] > period_ns)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            outcome.append(exc)

    thread = threading.Thread(target=probe, name="aiofranka-wake-probe", daemon=True)
    thread.start()
    thread.join()
    if outcome:
        raise outcome[0]
    us = lateness / 1000.0
    p50, p99 = np.percentile(us, [50, 99])
    summary = Summary(count, float(p50), float(p99), float(us.max()), float(us.mean()))
    return WakeupReport(count=count, period_s=period, priority=priority, lateness=summary,
                        late_half_period=int(np.count_nonzero(lateness > period_ns // 2)),
                        late_period=int(np.count_nonzero(lateness > period_ns)))
