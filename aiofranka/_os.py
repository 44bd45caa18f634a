"""Thread scheduling: the one place that reads, promotes, demotes and restores a thread's policy.

pylibfranka promotes the thread that connects to SCHED_FIFO 99 and threads inherit their
creator's policy, so every thread aiofranka starts or serves from decides its policy here
(see docs/controller.md#scheduling and docs/guardian.md#priority). ``tid`` is a native thread id
(``threading.get_native_id()``); 0 is the calling thread. ``SCHED_RESET_ON_FORK`` is ignored
when a policy is read.
"""

from __future__ import annotations

import os

__all__ = [
    "demote_to_normal",
    "fifo_priority",
    "is_fifo",
    "is_normal",
    "promote",
    "restore_thread_scheduling",
    "set_normal",
    "thread_scheduling",
]

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
