"""The guardian thread: it names what blocked the loop and serves the cycles the loop misses.

The deadlines are watched in C (the kernel's watch thread, which never takes
the GIL); the guardian sleeps on an eventfd until the watch reports a due
cycle left unclaimed past the threshold. The event loop is then blocked: it
names the culprit (the event-loop thread's current frame), and with takeover
serves cycles itself through the :class:`~aiofranka.loop._cycle.Cycle` until
the loop is back. See docs/guardian.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import select
import sys
import threading
import time

from .._os import promote, set_normal

__all__ = ["Stall", "StallRecord", "describe_thread"]

log = logging.getLogger("aiofranka")

# Frames of the event loop's own machinery, skipped when naming a culprit.
_INTERNAL = (
    os.path.dirname(asyncio.__file__),
    os.path.dirname(threading.__file__) + os.sep + "threading.py",
    os.path.dirname(threading.__file__) + os.sep + "selectors.py",
    os.path.dirname(threading.__file__) + os.sep + "runpy.py",
)

#: Culprit recorded when the loop was idle in select yet late to serve a waiting
#: state: the operating system woke it late. Counted, not warned about.
IDLE_LOOP = "the event loop's own wakeup (it was idle, waiting in select)"

# Garbage collection in progress (the collector runs in whatever thread allocates).
_gc_started_ns = 0
_gc_generation = -1


def _gc_callback(phase: str, info: dict) -> None:
    global _gc_started_ns, _gc_generation
    if phase == "start":
        _gc_generation = info.get("generation", -1)
        _gc_started_ns = time.monotonic_ns()
    else:
        _gc_started_ns = 0


def watch_gc(enable: bool) -> None:
    """Register (or remove) the callback that lets stalls be blamed on the collector."""
    if enable and _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    elif not enable and _gc_callback in gc.callbacks:
        gc.callbacks.remove(_gc_callback)


@dataclasses.dataclass(frozen=True)
class StallRecord:
    """What blocked the event loop past the threshold, and how often and how long."""

    culprit: str
    count: int
    longest_ms: float
    total_ms: float


@dataclasses.dataclass
class Stall:
    culprit: str
    count: int = 0
    longest_ms: float = 0.0
    total_ms: float = 0.0
    warned: bool = False

    def record(self) -> StallRecord:
        return StallRecord(self.culprit, self.count, self.longest_ms, self.total_ms)


def _is_internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL)


def describe_thread(thread_id: int, loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Name what the given thread is running: its task or callback and the innermost user line."""
    if _gc_started_ns:
        return f"garbage collection (generation {_gc_generation})"
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "<thread not found>"
    innermost = None
    outermost_user = None
    f = frame
    while f is not None:
        if not _is_internal(f.f_code.co_filename):
            if innermost is None:
                innermost = f
            outermost_user = f
        elif outermost_user is not None:
            break  # left the user's code: what is above belongs to the event loop
        f = f.f_back
    if innermost is None or (frame.f_code.co_name == "select" and frame.f_code.co_filename.endswith("selectors.py")):
        if frame.f_code.co_name == "select":
            return IDLE_LOOP
        code = frame.f_code
        return f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
    where = f"{os.path.basename(innermost.f_code.co_filename)}:{innermost.f_lineno}"
    top = outermost_user.f_code.co_qualname if hasattr(outermost_user.f_code, "co_qualname") \
        else outermost_user.f_code.co_name
    inner = innermost.f_code.co_name
    name = top if inner == top.rsplit(".", 1)[-1] else f"{top} -> {inner}"
    task = None
    if loop is not None:
        current = getattr(asyncio.tasks, "_current_tasks", {})
        task = current.get(loop)
    prefix = f"task {task.get_name()!r}: " if task is not None else ""
    return f"{prefix}{name} ({where})"


class Guardian(threading.Thread):
    """Serves the ``cycle`` when the loop misses one, woken by the kernel's watch of the ``schedule``.

    ``threshold_ns`` is how late a claim may be before it counts as a stall.
    """

    def __init__(self, cycle, schedule, *, threshold_ns: int, loop: asyncio.AbstractEventLoop, loop_thread_id: int,
                 rt_priority: int | None = None,
                 takeover: bool = False, log_stalls: bool = True, stop_after_ns: int | None = None) -> None:
        super().__init__(name="aiofranka-guardian", daemon=True)
        self._cycle = cycle
        self._schedule = schedule
        self._threshold_ns = threshold_ns
        self._loop = loop
        self._loop_thread_id = loop_thread_id
        self._stop_event = threading.Event()
        self._rt_priority = rt_priority
        self.stalls: dict[str, Stall] = {}
        self.stall_count = 0
        self.longest_stall_ms = 0.0
        self._lock = threading.Lock()
        self._takeover = takeover
        self._log_stalls = log_stalls
        self._stop_after_ns = stop_after_ns
        self.takeovers = 0
        self.longest_takeover_ms = 0.0
        #: Times the watch woke this thread (each report of an unclaimed cycle, and stop()).
        self.wakeups = 0
        self._state_poll = None
        # The eventfd the watch thread writes; closed (under _fd_lock) once
        # the watch thread is stopped, by whichever of run() and stop() ends last.
        self._wake_fd = -1
        self._fd_lock = threading.Lock()

    def start(self) -> None:
        """Start the kernel's watch thread, then this one."""
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            self._cycle.start_watch(self._threshold_ns, self._wake_fd, self._rt_priority)
            super().start()
        except BaseException:
            self._release()
            raise

    def stop(self) -> None:
        self._stop_event.set()
        with self._fd_lock:
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)
        if not self.is_alive():
            self._release()

    def _release(self) -> None:
        with self._fd_lock:
            self._cycle.stop_watch()  # it writes the descriptor no more
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1

    def _set_priority(self) -> None:
        try:
            if self._rt_priority is not None:
                promote(self._rt_priority)
            else:
                set_normal()
        except (OSError, AttributeError):
            pass

    def run(self) -> None:
        try:
            self._guard()
        finally:
            self._release()

    def _guard(self) -> None:
        self._set_priority()
        c, sch = self._cycle, self._schedule
        stopped = self._stop_event.is_set
        monotonic_ns = time.monotonic_ns
        sleep = time.sleep
        state_poll = None
        if c.state_fd is not None:
            state_poll = select.poll()
            state_poll.register(c.state_fd, select.POLLIN)
        self._state_poll = state_poll
        wake = select.poll()
        wake.register(self._wake_fd, select.POLLIN)
        while not stopped() and c.guard_running:
            # GIL released until the watch reports (or stop()); the timeout
            # only bounds how long a missed stop could go unnoticed.
            if not wake.poll(1000):
                continue
            os.eventfd_read(self._wake_fd)
            self.wakeups += 1
            if stopped():
                break
            epoch, due = sch.due
            if c.session_finished or sch.stalled_epoch != epoch or sch.claimed_epoch >= epoch:
                continue  # the loop claimed it after all, a report already handled, or nothing left to serve
            # Past the deadline and still unclaimed: the event loop is blocked.
            culprit = describe_thread(self._loop_thread_id, self._loop)
            if self._takeover and c.has_control:
                served_ms = self._serve_while_stalled(culprit, due)
                if served_ms is not None:
                    self._record(culprit, served_ms)
                    continue
                if c.session_finished:
                    continue  # not a stall: the session ended and the loop is winding down
            while sch.claimed_epoch < epoch and c.guard_running and not stopped():
                sleep(0.0002)
            self._record(culprit, (monotonic_ns() - due) / 1e6)

    def _wait_for_state(self) -> None:
        """Sleep, GIL released, until the next state is there (or due)."""
        sch = self._schedule
        if self._state_poll is not None:
            self._state_poll.poll(max(1, int((sch.next_due_ns - time.monotonic_ns()) / 1e6) + 50))
            return
        delay = sch.next_due_ns - sch.margin_ns - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)

    def _serve_while_stalled(self, culprit: str, due_ns: int) -> float | None:
        """Take the cycle over until the loop is back; return the stall's length (ms).

        Returns None if the loop claimed the cycle after all.
        """
        c, sch = self._cycle, self._schedule
        lock = c.lock
        c.claim_next()  # the rescue thread, if serving, leaves the states to us
        if not lock.acquire(timeout=0.002):
            return None  # the loop is serving this very cycle
        while True:
            if sch.claimed_epoch >= sch.due[0] or c.session_finished or not c.guard_running:
                # Claimed after all, or the session already ended (the loop
                # wrote motion_finished and has not wound down yet): no state
                # will come, and a readOnce would wait for one with the GIL held.
                lock.release()
                return None
            if c.state_ready():
                break
            lock.release()  # the rescue thread took that state: wait for the next
            self._wait_for_state()
            lock.acquire()
        c.loop_back = False
        c.guardian_active = True
        self.takeovers += 1
        start = time.monotonic_ns()
        held = True
        try:
            while c.guard_running:
                try:
                    finished = c.serve_from_guardian()
                except BaseException as exc:  # noqa: BLE001 - handed to the loop coroutine
                    c.guardian_done(exc)
                    break
                if finished:
                    c.guardian_done(None)
                    break
                elapsed = time.monotonic_ns() - start
                if self._stop_after_ns is not None and elapsed > self._stop_after_ns:
                    c.stall_stop(culprit, elapsed / 1e6, self._stop_after_ns / 1e6)
                lock.release()
                held = False
                if c.loop_back:
                    break
                self._wait_for_state()
                if c.loop_back:
                    break
                lock.acquire()
                held = True
                while not c.state_ready() and c.guard_running and not c.loop_back:
                    # The rescue thread served that state: wait for the next.
                    lock.release()
                    held = False
                    self._wait_for_state()
                    lock.acquire()
                    held = True
        finally:
            c.guardian_active = False
            if held:
                lock.release()
            took = (time.monotonic_ns() - start) / 1e6
            self.longest_takeover_ms = max(self.longest_takeover_ms, took)
        return (time.monotonic_ns() - due_ns) / 1e6

    def _record(self, culprit: str, duration_ms: float) -> None:
        with self._lock:
            stall = self.stalls.get(culprit)
            if stall is None:
                stall = self.stalls[culprit] = Stall(culprit)
            stall.count += 1
            stall.longest_ms = max(stall.longest_ms, duration_ms)
            stall.total_ms += duration_ms
            self.stall_count += 1
            self.longest_stall_ms = max(self.longest_stall_ms, duration_ms)
            first = not stall.warned
            stall.warned = True
        if first and self._log_stalls and not culprit.startswith(IDLE_LOOP):
            log.warning("aiofranka: the event loop was blocked for %.1f ms by %s; the robot's cycle was due%s. "
                        "Offload this work (asyncify, CudaInferenceThread, mpify). Reported once per culprit.",
                        duration_ms, culprit, " (the guardian kept the arm fed)" if self._takeover else "")

    def records(self) -> tuple[StallRecord, ...]:
        with self._lock:
            return tuple(sorted((s.record() for s in self.stalls.values()), key=lambda r: -r.total_ms))
