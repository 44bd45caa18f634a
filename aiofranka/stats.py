"""Statistics: preallocated recorders and the frozen snapshots built from them.

A loop records integer nanosecond samples without allocating: the Controller
into :class:`LatencyHistogram` (1 us bins over the whole session), the
Session's pacer into :class:`SampleRing` (the newest N samples). Either turns
its samples into a frozen :class:`Summary` (microseconds) off the hot path.
The snapshots (:class:`LoopStats`, :class:`SessionStats`) are frozen
dataclasses with ``to_dict()``. See docs/timing.md#the-figures.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["LatencyHistogram", "LoopStats", "PlaybackStats", "PolicyStats", "RemoteStats", "SampleRing", "SessionStats",
           "Summary"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """A distribution of durations: its count, median, 99th percentile, maximum and mean, in microseconds."""

    count: int
    p50_us: float
    p99_us: float
    max_us: float
    mean_us: float

    @classmethod
    def empty(cls) -> "Summary":
        nan = float("nan")
        return cls(0, nan, nan, nan, nan)

    @classmethod
    def from_ns(cls, values: np.ndarray) -> "Summary":
        """The summary of integer-nanosecond samples (numpy's percentiles, linear interpolation)."""
        if values.size == 0:
            return cls.empty()
        us = values / 1000.0
        p50, p99 = np.percentile(us, [50, 99])
        return cls(int(values.size), float(p50), float(p99), float(us.max()), float(us.mean()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
        return Summary.from_ns(self.values())


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
    * ``serve``: who serves the cycles (``"kernel"``: the C thread serves
      every cycle, Python only publishes targets, docs/kernel-serving.md;
      ``"loop"``: the event loop, backed by the guardian and the rescue thread);
      ``kernel_cycles``: cycles the C thread served that way (counted in ``cycles``);
      ``serve_cpu``: the CPU it was last seen on (-1: unknown), ``serve_moves``:
      how often placement moved it, and ``serve_follows``: whether it keeps to
      the CPU the states arrive on (docs/kernel-serving.md#placement).
    * ``cpu_wake_latency_us``: the PM QoS wake-up latency requested for the
      session (µs; None: none, by choice or for want of permission;
      docs/controller.md#cpu-wake-up-latency).
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
    serve: str = "loop"
    kernel_cycles: int = 0
    serve_cpu: int = -1
    serve_moves: int = 0
    serve_follows: bool = False
    cpu_wake_latency_us: int | None = None

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
        ]
        if self.serve == "kernel":
            # The C thread keeps no per-cycle histograms; the recorder has each cycle's compute_us.
            rows += [("served by", f"kernel ({self.kernel_cycles} cycles; per-cycle timings: controller.record)"),
                     ("serving CPU", f"{self.serve_cpu} ({self.serve_moves} moves"
                                     f"{', following the states' if self.serve_follows else ''})")]
        else:
            rows += [
                ("compute (read->write)", str(self.compute)),
                ("period", str(self.period)),
                ("readOnce wait (GIL held)", str(self.read_wait)),
                ("served by", "loop"),
            ]
        rows += [
            ("robot time / wall time", f"{self.robot_time_s:.2f} s / {self.wall_time_s:.2f} s"),
            ("mode / wait", f"{self.mode} / {self.wait} (margin {self.wake_margin_us:.0f} us, "
                            f"{self.late_wakeups} late wakeups)"),
            ("event-loop stalls", f"{self.stalls} (longest {self.longest_stall_ms:.1f} ms)"),
            ("guardian takeovers", f"{self.takeovers} ({self.guardian_cycles} cycles served, "
                                   f"longest {self.longest_takeover_ms:.1f} ms)"),
            ("rescue thread", f"{self.rescue}: {self.rescues} rescues ({self.rescued_cycles} cycles served, "
                              f"longest {self.longest_rescue_ms:.1f} ms)"),
            ("CPU wake-up latency", "not requested" if self.cpu_wake_latency_us is None
             else f"{self.cpu_wake_latency_us} us requested"),
        ]
        rows += [("  culprit", f"{c.count}x, longest {c.longest_ms:.1f} ms: {c.culprit}") for c in self.culprits[:5]]
        width = max(len(name) for name, _ in rows)
        lines = [f"== {title} =="] + [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)


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
    * ``jitter``: a :class:`Summary` (µs; numpy's percentiles, linear
      interpolation) of the jitter over the window, where the jitter of an
      iteration is ``|actual period - target period|`` and its actual period
      is the time from its start to the start of the next iteration.

    ``iterations`` and ``overruns`` count since the start; the period and
    jitter figures cover the newest ``window`` periods only (10,000 by
    default). With no period measured yet they are ``nan``. Periods are
    stored as integer nanoseconds.

    >>> stats = SessionStats(3, 0, 0.02, 0.02, Summary(3, 0.0, 0.0, 0.0, 0.0))
    >>> stats.to_dict()["jitter"]["max_us"]
    0.0
    """

    iterations: int
    overruns: int
    target_period_s: float
    avg_period_s: float
    jitter: Summary

    def to_dict(self) -> dict:
        """The figures as a plain ``dict`` (e.g. for JSON or a logger)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"{self.iterations} iterations, {self.overruns} overruns, period "
                f"{1e3 * self.avg_period_s:.3f} ms (target {1e3 * self.target_period_s:.3f} ms), jitter "
                f"p50 {self.jitter.p50_us:.1f} p99 {self.jitter.p99_us:.1f} max {self.jitter.max_us:.1f} us")


@dataclasses.dataclass(frozen=True)
class PlaybackStats:
    """A frozen snapshot of ``Controller.play``'s figures since the controller's last start.

    * ``playing``: rows are being followed (or are due to start);
    * ``start_ms``, ``end_ms``: robot times of the first and last row of the
      current rows (-1 when none);
    * ``plays``: rows handed to the loop;
    * ``held_cycles``: cycles that held the last row because the rows had run
      out (a policy's starvation, in milliseconds);
    * ``late_switches``: plays that started after their ``start_ms`` (the loop
      then indexes by robot time, so the target may step by the rows' slope
      times the delay).
    """

    playing: bool
    start_ms: int
    end_ms: int
    plays: int
    held_cycles: int
    late_switches: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PolicyStats:
    """A frozen snapshot of an ``InferenceRuntime``'s counters (see docs/policies.md#the-counters).

    * ``steps``: ``run_step`` calls that ran a control step;
    * ``executed_steps``: control steps executed this episode (starved ticks do not count);
    * ``requests``: policy calls made (bootstrap included), ``bootstrap_requests`` of them at start-up;
    * ``integrated``: replies that became the buffer; ``rejected``: replies as old as
      their own length (in executed steps), discarded whole;
    * ``stale_steps_dropped``: actions dropped from the front of replies because their
      steps had been executed while the request was in flight;
    * ``blended_steps``: actions blended with the launch-time buffer (``ensemble_weight``);
    * ``starved_ticks``: control ticks with nothing left to execute (the arm held the last target);
    * ``held_cycles``: 1 kHz cycles the Controller held the last target because
      the interpolated rows had run out (with the built-in Controller executor; else 0);
    * ``latency_steps``: the latency estimate in control steps (NaN before one is known);
      ``latency``: the policy calls' durations, as a :class:`Summary` (µs);
    * ``chunk_len``: the locked chunk length (0 before the first chunk);
    * ``in_flight``: a request is awaited;
    * ``missed_replies``: policy calls that raised a missed-reply error (a remote server
      unavailable or past the deadline); the runtime carried on, the arm holding.
    """

    steps: int
    executed_steps: int
    requests: int
    bootstrap_requests: int
    integrated: int
    rejected: int
    stale_steps_dropped: int
    blended_steps: int
    starved_ticks: int
    held_cycles: int
    latency_steps: float
    latency: Summary
    chunk_len: int
    in_flight: bool
    missed_replies: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RemoteStats:
    """A frozen snapshot of a remote policy proxy's calls (see docs/remote.md#the-figures).

    Durations only: the client measures ``round_trip``; the server reports each call's
    ``queue_wait`` (waiting for the previous call to finish) and ``inference`` (the method
    itself); ``transport`` is what is left of the round trip (network, encoding, gRPC).
    ``calls`` answered calls (raising ones included), ``unavailable``, ``deadline_exceeded``,
    ``cancelled`` (by the caller) and ``failed`` (other refusals) the calls that got no answer.
    """

    calls: int
    unavailable: int
    deadline_exceeded: int
    cancelled: int
    failed: int
    round_trip: Summary
    queue_wait: Summary
    inference: Summary
    transport: Summary

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self, title: str = "remote policy") -> str:
        lines = [f"{title}: {self.calls} calls, {self.unavailable} unavailable, "
                 f"{self.deadline_exceeded} past the deadline, {self.cancelled} cancelled, {self.failed} failed"]
        for name in ("round_trip", "queue_wait", "inference", "transport"):
            lines.append(f"  {name:<11} {getattr(self, name)}")
        return "\n".join(lines)
