"""Process and thread settings the loop changes for a session, and puts back.

Thread scheduling (save, promote, restore), the interpreter's switch
interval and the garbage collector's freeze; see docs/timing.md.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

from .threads import restore_thread_scheduling, thread_scheduling

__all__ = ["IS_LINUX", "fifo_priority_above", "gc_freezer", "promote_current_thread", "restore_thread_scheduling",
           "switch_interval", "thread_scheduling"]

IS_LINUX = sys.platform.startswith("linux")
_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)


def promote_current_thread(priority: int | None) -> tuple | None:
    """Run the calling thread SCHED_FIFO at ``priority`` if it runs at the normal policy now.

    Returns what :func:`restore_thread_scheduling` needs to put it back, or
    ``None`` when nothing was changed (no priority, already real-time or
    batch/idle on purpose, or not permitted here).
    """
    if priority is None:
        return None
    saved = thread_scheduling(threading.get_native_id())
    if saved is None or saved[1] & ~_RESET_ON_FORK != os.SCHED_OTHER:
        return None
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | _RESET_ON_FORK, os.sched_param(priority))
    except (OSError, AttributeError):
        return None
    return saved


def fifo_priority_above(steps: int) -> int | None:
    """The calling thread's SCHED_FIFO priority plus ``steps`` (at most 99); ``None`` if it is not FIFO."""
    try:
        if os.sched_getscheduler(0) & ~_RESET_ON_FORK == os.SCHED_FIFO:
            return min(99, os.sched_getparam(0).sched_priority + steps)
    except (OSError, AttributeError):
        pass
    return None


class _SwitchInterval:
    """Process-wide ``sys.setswitchinterval`` shared by every running controller.

    The first controller to start saves the interpreter's interval; while any
    runs, the smallest requested interval is in force; the last to stop
    restores the saved one.
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


switch_interval = _SwitchInterval()
gc_freezer = _GcFreezer()
