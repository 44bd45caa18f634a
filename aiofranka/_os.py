"""Thread scheduling and process-wide interpreter settings: the one place that changes them.

Thread policies (read, promote, demote, restore), the switch interval and the
garbage collector's freeze that the loop sets for a session and puts back.

pylibfranka promotes the thread that connects to SCHED_FIFO 99 and threads inherit their
creator's policy, so every thread aiofranka starts or serves from decides its policy here
(see docs/controller.md#scheduling and docs/guardian.md#priority). ``tid`` is a native thread id
(``threading.get_native_id()``); 0 is the calling thread. ``SCHED_RESET_ON_FORK`` is ignored
when a policy is read.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

__all__ = [
    "IS_LINUX",
    "allowed_cpus",
    "cpu_wake_latency",
    "demote_to_normal",
    "fifo_priority",
    "fifo_priority_above",
    "gc_freezer",
    "is_fifo",
    "is_normal",
    "loop_thread_demotion",
    "promote",
    "promote_current_thread",
    "restore_thread_scheduling",
    "set_normal",
    "switch_interval",
    "thread_scheduling",
]

IS_LINUX = sys.platform.startswith("linux")

_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid) & ~_RESET_ON_FORK


def fifo_priority(tid: int = 0) -> int | None:
    """The SCHED_FIFO priority of the thread; None when it runs another policy or cannot be read."""
    try:
        if _policy(tid) == os.SCHED_FIFO:
            return os.sched_getparam(tid).sched_priority
    except (AttributeError, OSError):
        pass
    return None


def is_fifo(tid: int = 0) -> bool:
    """True when the thread runs SCHED_FIFO."""
    return fifo_priority(tid) is not None


def is_normal(tid: int = 0) -> bool:
    """True when the thread runs SCHED_OTHER (False for batch/idle/real-time, or unreadable)."""
    try:
        return _policy(tid) == os.SCHED_OTHER
    except (AttributeError, OSError):
        return False


def promote(priority: int, *, reset_on_fork: bool = False, tid: int = 0) -> None:
    """Run the thread at SCHED_FIFO ``priority``; ``reset_on_fork``: threads it creates start normal.

    Raises what ``os.sched_setscheduler`` raises (``PermissionError`` without the right,
    ``AttributeError`` where the OS has no ``sched_*``): each caller decides whether that matters.
    """
    policy = os.SCHED_FIFO | (_RESET_ON_FORK if reset_on_fork else 0)
    os.sched_setscheduler(tid, policy, os.sched_param(priority))


def set_normal(*, reset_on_fork: bool = False, tid: int = 0) -> None:
    """Put the thread on SCHED_OTHER, whatever it runs now. Raises like :func:`promote`."""
    policy = os.SCHED_OTHER | (_RESET_ON_FORK if reset_on_fork else 0)
    os.sched_setscheduler(tid, policy, os.sched_param(0))


def demote_to_normal() -> bool:
    """Put the calling thread back on SCHED_OTHER if it runs SCHED_FIFO or SCHED_RR.

    For threads that may have inherited a real-time policy: offloaded work must never
    outrank the control loop. A batch or idle policy is left alone. True when the policy
    was changed; errors (no permission, no ``os.sched_*``) are ignored.
    """
    try:
        if _policy(0) in (os.SCHED_FIFO, os.SCHED_RR):
            set_normal()
            return True
    except (AttributeError, OSError):
        pass
    return False


def thread_scheduling(tid: int) -> tuple | None:
    """``(tid, policy, priority)`` of a thread of this process (its native id);
    None where it cannot be read. :func:`restore_thread_scheduling` takes it back."""
    try:
        return tid, os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority
    except (AttributeError, OSError):
        return None


def restore_thread_scheduling(saved: tuple | None, *, unless_changed_from: tuple | None = None) -> None:
    """Put a thread back on a policy saved by :func:`thread_scheduling`.

    With ``unless_changed_from``, only if the thread still runs that policy
    (something else may have changed it meanwhile). A thread that has exited,
    or a change this process may not make, is ignored.
    """
    if saved is None:
        return
    tid, policy, priority = saved
    if unless_changed_from is not None and thread_scheduling(tid) != unless_changed_from:
        return
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(priority))
    except (AttributeError, OSError):
        pass


def allowed_cpus() -> set[int]:
    """The CPUs the calling thread may run on (all of them where affinity cannot be read)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def fifo_priority_above(steps: int) -> int | None:
    """The calling thread's SCHED_FIFO priority plus ``steps`` (at most 99); None when it is not FIFO."""
    priority = fifo_priority()
    return None if priority is None else min(99, priority + steps)


def promote_current_thread(priority: int | None) -> tuple | None:
    """Run the calling thread SCHED_FIFO at ``priority`` (reset on fork) if it runs SCHED_OTHER now.

    Returns what :func:`restore_thread_scheduling` needs to put it back, or
    None when nothing changed (no priority, already real-time or batch/idle on
    purpose, or not permitted here).
    """
    if priority is None:
        return None
    saved = thread_scheduling(threading.get_native_id())
    if saved is None or not is_normal():
        return None
    try:
        promote(priority, reset_on_fork=True)
    except (OSError, AttributeError):
        return None
    return saved


class _SwitchInterval:
    """Process-wide ``sys.setswitchinterval`` shared by every running controller.

    The first to start saves the interpreter's interval; while any runs, the
    smallest requested interval is in force; the last to stop restores it.
    """

    def __init__(self) -> None:
        self._saved: float | None = None
        self._active: list[float] = []

    def enter(self, interval: float) -> None:
        if not self._active:
            self._saved = sys.getswitchinterval()
        self._active.append(interval)
        sys.setswitchinterval(min(self._active))

    def leave(self, interval: float) -> None:
        if interval not in self._active:
            return
        self._active.remove(interval)
        if self._active:
            sys.setswitchinterval(min(self._active))
        elif self._saved is not None:
            sys.setswitchinterval(self._saved)
            self._saved = None


class _GcFreezer:
    """``gc.freeze()`` while any controller runs; ``gc.unfreeze()`` after the last."""

    def __init__(self) -> None:
        self._count = 0

    def enter(self) -> None:
        if self._count == 0:
            gc.collect()
            gc.freeze()
        self._count += 1

    def leave(self) -> None:
        if self._count == 0:
            return
        self._count -= 1
        if self._count == 0:
            gc.unfreeze()


class _LoopThreadDemotion:
    """SCHED_OTHER for an event loop's thread while any kernel-served session runs on it.

    With the C thread serving, no cycle waits on the event loop, and a real-time
    loop thread would run the user's Python (imports, dataset writing, a stall)
    above every normal thread, the simulator's and the user's workers included.
    The first session on a thread saves its policy, the last one puts it back.
    """

    def __init__(self) -> None:
        self._held: dict[int, list] = {}  # native id -> [sessions, saved policy or None]
        self._kept: set[int] = set()

    def keep_current_thread(self) -> None:
        """Leave the calling thread's policy alone: it runs only aiofranka's own
        short callbacks (server mode's loop thread), never the user's Python."""
        self._kept.add(threading.get_native_id())

    def enter(self) -> None:
        tid = threading.get_native_id()
        held = self._held.get(tid)
        if held is not None:
            held[0] += 1
            return
        saved = thread_scheduling(tid)
        try:
            if saved is None or tid in self._kept or saved[1] & ~_RESET_ON_FORK not in (os.SCHED_FIFO, os.SCHED_RR):
                saved = None
            else:
                set_normal(reset_on_fork=bool(saved[1] & _RESET_ON_FORK))
        except (AttributeError, OSError):
            saved = None
        self._held[tid] = [1, saved]

    def leave(self) -> None:
        tid = threading.get_native_id()
        held = self._held.get(tid)
        if held is None:
            return
        held[0] -= 1
        if held[0] == 0:
            del self._held[tid]
            restore_thread_scheduling(held[1])


class _CpuWakeLatency:
    """A PM QoS request (``/dev/cpu_dma_latency``) while any controller runs.

    An idle CPU in a deep idle state, or an idle vCPU halted in its hypervisor,
    can take milliseconds to wake for the state that just arrived; the request
    keeps idle CPUs in states they leave at once (at 0: polling). The kernel
    holds it while the descriptor is open; the last session to end closes it.
    Where the file is absent or not writable (needs root), nothing is requested.
    """

    PATH = "/dev/cpu_dma_latency"

    def __init__(self) -> None:
        self._fd: int | None = None
        self._active: list[int] = []

    def enter(self, microseconds: int) -> int | None:
        """Request ``microseconds``; the value in force after (None: no request could be made)."""
        self._active.append(microseconds)
        if self._fd is None:
            try:
                self._fd = os.open(self.PATH, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return self._write()

    def leave(self, microseconds: int) -> None:
        if microseconds not in self._active:
            return
        self._active.remove(microseconds)
        if self._fd is None:
            return
        if self._active:
            self._write()
        else:
            os.close(self._fd)
            self._fd = None

    def _write(self) -> int | None:
        value = min(self._active)
        try:
            os.write(self._fd, value.to_bytes(4, sys.byteorder, signed=True))
        except OSError:
            return None
        return value


switch_interval = _SwitchInterval()
gc_freezer = _GcFreezer()
cpu_wake_latency = _CpuWakeLatency()
loop_thread_demotion = _LoopThreadDemotion()
