"""Why states were lost: the kernel's gap records, classified.

``Kernel.attrib_start()`` makes the kernel record every cycle that saw a gap
in robot time (``csrc/attrib.c``); :class:`GapReader` drains those records
and :func:`classify` names a cause for each (docs/versus.md#attribution):

* ``simulator``: the client called ``readOnce`` before the next state was
  due and still got a later one: the simulator skipped or bunched states
  (under kernel serving also: its thread waited for the state, which came late);
* ``handover``: the cycle was served by another thread than the one before
  (event loop, guardian, rescue thread);
* ``host``: the serving thread was runnable but not running (its run-queue
  wait covers most of the lateness), the loop slept in epoll past the
  deadline, or the rescue thread itself was late (under kernel serving: its
  thread was runnable but not running, or busy);
* ``GIL wait``: the loop's thread was found waiting on a futex (the GIL)
  while its cycle was overdue;
* ``event loop late``: the loop's thread was running Python (a callback) or
  blocked in another call (``time.sleep`` in a callback) while overdue;
* ``unknown``: late, with nothing to tell which.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CATEGORIES", "Gap", "GapReader", "breakdown", "classify"]

CATEGORIES = ("simulator", "handover", "host", "GIL wait", "event loop late", "unknown")

#: x86-64 system calls a probed thread can sleep in, by number.
FUTEX = 202
EPOLL = {232: "epoll_wait", 281: "epoll_pwait", 441: "epoll_pwait2"}
SLEEPS = {35: "nanosleep", 230: "clock_nanosleep", 23: "select", 270: "pselect6", 7: "poll", 271: "ppoll",
          0: "read", 45: "recvfrom", 47: "recvmsg", 61: "wait4"}
RUNNING, UNPROBED = -1, -2


@dataclasses.dataclass(frozen=True)
class Gap:
    """One cycle that saw a gap in robot time, with the cycle written before it.

    Times are CLOCK_MONOTONIC ns. ``kind``: 0 a Python thread (event loop or
    guardian, told apart by ``tid``; ``prev_tid`` 0: not known, the cycle
    before recording started), 1 the rescue thread, 2 the same thread serving
    every cycle (kernel serving). ``cpu_ns``,
    ``delay_ns``, ``window_ns``: what the serving Python thread did between
    its own previous cycle and this call (CPU time, run-queue wait, wall
    time; -1 unknown). ``probe``: what the watch thread found the loop's
    thread in when the cycle was overdue (-1 running, -2 not probed, else a
    system call number), at ``probe_ns``. ``sent_ns``, ``prev_sent_ns``: when the
    state read, and the one read in the cycle before, were sent (the socket's
    receive stamp, taken in the sender's ``sendto`` on loopback; -1 unknown).
    """

    time_ms: int
    prev_ms: int
    prev_write_ns: int
    due_ns: int
    call_ns: int
    read_ns: int
    write_ns: int
    tid: int
    kind: int
    prev_tid: int
    prev_kind: int
    cpu_ns: int
    delay_ns: int
    window_ns: int
    probe: int
    probe_ns: int
    period_ns: int
    sent_ns: int = -1
    prev_sent_ns: int = -1

    @property
    def lost(self) -> int:
        """States lost in this gap."""
        return self.time_ms - self.prev_ms - 1


FIELDS = tuple(f.name for f in dataclasses.fields(Gap))


def _role(kind: int, tid: int, roles: dict[int, str]) -> str:
    return "rescue" if kind == 1 else "kernel" if kind == 2 else roles.get(tid, f"thread {tid}")


def classify(gap: Gap, roles: dict[int, str] | None = None) -> tuple[str, str]:
    """(category, detail) for one gap; ``roles`` names threads by id (``{tid: "loop"}``)."""
    roles = roles or {}
    period = gap.period_ns if gap.period_ns > 0 else 1_000_000
    if gap.kind != gap.prev_kind or (gap.kind == 0 and gap.prev_tid and gap.tid != gap.prev_tid):
        return "handover", f"{_role(gap.prev_kind, gap.prev_tid, roles)} -> {_role(gap.kind, gap.tid, roles)}"
    late = gap.call_ns - gap.due_ns if gap.due_ns > 0 else None
    if late is None or late < period // 2:
        return "simulator", "the read was called before the state was due"
    if gap.kind == 1:
        return "host", f"the rescue thread read {late / 1000:.0f} us after the state was due"
    if gap.kind == 2:
        return _classify_kernel(gap, late)
    if gap.delay_ns >= 0 and gap.delay_ns * 2 >= late:
        return "host", f"runnable but not running for {gap.delay_ns / 1000:.0f} us"
    probed = gap.probe != UNPROBED and gap.prev_write_ns <= gap.probe_ns <= gap.call_ns
    if probed:
        if gap.probe == FUTEX:
            return "GIL wait", "the loop's thread waited on a futex while overdue"
        if gap.probe in EPOLL:
            return "host", f"the loop slept in {EPOLL[gap.probe]} past the deadline"
        if gap.probe == RUNNING:
            return "event loop late", "a callback was running"
        name = SLEEPS.get(gap.probe, f"system call {gap.probe}")
        return "event loop late", f"a callback blocked in {name}"
    if gap.cpu_ns >= 0 and gap.cpu_ns * 2 >= late:
        return "event loop late", f"the loop's thread ran {gap.cpu_ns / 1000:.0f} us of Python"
    return "unknown", f"{late / 1000:.0f} us late, not probed"


def _classify_kernel(gap: Gap, late: int) -> tuple[str, str]:
    """A gap seen by kernel serving, whose thread sleeps only while it waits for the next state."""
    if gap.delay_ns >= 0 and gap.delay_ns * 2 >= late:
        return "host", f"the kernel thread was runnable but not running for {gap.delay_ns / 1000:.0f} us"
    if gap.cpu_ns >= 0 and gap.cpu_ns * 2 >= late:
        return "host", f"the kernel thread ran {gap.cpu_ns / 1000:.0f} us since its last cycle"
    if gap.sent_ns > 0 and gap.prev_sent_ns > 0:
        # The thread slept in poll. The states between the two it read: sent a
        # period apart, one of them waited in the socket for a late wake-up;
        # sent together, the simulator bunched them.
        span = gap.sent_ns - gap.prev_sent_ns
        period = gap.period_ns if gap.period_ns > 0 else 1_000_000
        if span * 2 < (gap.lost + 1) * period:
            return "simulator", f"it sent {gap.lost + 1} states within {span / 1000:.0f} us"
        return "host", (f"asleep while a state waited in the socket ({gap.lost + 1} states sent over "
                        f"{span / 1000:.0f} us, the newest read {(gap.call_ns - gap.sent_ns) / 1000:.0f} us after)")
    if gap.window_ns >= 0 and gap.delay_ns >= 0 and gap.cpu_ns >= 0:
        asleep = gap.window_ns - gap.delay_ns - gap.cpu_ns
        if asleep * 2 >= gap.window_ns:
            return "simulator", f"the state came {late / 1000:.0f} us after it was due (the kernel thread was waiting)"
    return "unknown", f"the kernel thread read {late / 1000:.0f} us after the state was due"


def breakdown(gaps, roles: dict[int, str] | None = None) -> dict[str, dict]:
    """{category: {"gaps": n, "lost": states, "details": {detail: states}}} over ``gaps``."""
    out: dict[str, dict] = {}
    for gap in gaps:
        category, detail = classify(gap, roles)
        entry = out.setdefault(category, {"gaps": 0, "lost": 0, "details": {}})
        entry["gaps"] += 1
        entry["lost"] += gap.lost
        key = detail if category in ("handover", "event loop late", "GIL wait") else detail.split(" for ")[0]
        entry["details"][key] = entry["details"].get(key, 0) + gap.lost
    return out


class GapReader:
    """Drains a kernel's gap records (``Kernel.attrib_read``) into :class:`Gap` objects."""

    def __init__(self, kernel) -> None:
        self._kernel = kernel
        self._next = 0
        self.missed = 0  #: records overwritten before they were read
        self.cycles = 0  #: cycles written since start(), as of the last read

    def start(self) -> None:
        """Record from now on (clears earlier records)."""
        self._kernel.attrib_start()
        self._next = 0
        self.missed = 0

    def read(self) -> list[Gap]:
        """The records pushed since the last read."""
        count, data, self.cycles = self._kernel.attrib_read(self._next)
        rows = np.frombuffer(data, dtype=np.int64).reshape(-1, len(FIELDS))
        self.missed += count - self._next - len(rows)
        self._next = count
        return [Gap(*map(int, row)) for row in rows]
