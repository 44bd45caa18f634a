"""The machine's own floor: how late it wakes a thread sleeping to periodic deadlines.

:func:`probe_wakeups` is what ``aiofranka check`` runs; it returns a frozen
:class:`WakeupReport`. See docs/timing.md#is-this-machine-fit-for-1-khz-aiofranka-check.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from . import validation
from .stats import Summary

__all__ = ["WakeupReport", "probe_wakeups"]


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
    return WakeupReport(count=count, period_s=period, priority=priority, lateness=Summary.from_ns(lateness),
                        late_half_period=int(np.count_nonzero(lateness > period_ns // 2)),
                        late_period=int(np.count_nonzero(lateness > period_ns)))
