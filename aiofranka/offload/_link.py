"""The machinery behind a ProcessProxy: the child process, the pipe, the calls in flight.

A helper thread spawns the child and waits for its READY, so making or stopping a
proxy never blocks an event loop; replies are read by the running loop (``add_reader``)
or, for blocking callers, by polling the pipe. See docs/async.md (how mpify works).
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import itertools
import pickle
import select
import signal
import threading
import time
import weakref
from typing import Any, Callable

from .._os import demote_to_normal
from ..exceptions import CallTimeoutError, OffloadError, WorkerCrashedError, WorkerStoppedError
from ._pending import Pending, SyncWaiter, settle
from ._shm import Peer, Pool, unlink_prefix
from ._wire import (
    CONTROL,
    ERROR,
    READY,
    RESULT,
    STOP,
    Channel,
    decode,
    encode,
    pack_frame,
    rebuild_exception,
    segment_bytes,
    unpack_frame,
)



__all__ = ["Link", "ProxyStats", "running_loop"]

_STARTING, _RUNNING, _CRASHED, _STOPPING, _STOPPED = "starting", "running", "crashed", "stopping", "stopped"



def running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()  # None outside a running loop, without raising


def _death_reason(pid: int, code: int | None, before_ready: bool = False) -> str:
    if code is None:
        how = "closed its pipe"
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    text = f"the mpify child process (pid {pid}) {how}"
    if before_ready:
        text += (
            " before it was ready (its stderr says why). If the main script calls mpify() at "
            'import time, guard that code with if __name__ == "__main__":'
        )
    return text


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """Counters of one proxy's traffic since it started (a debugging aid; ``proxy.stats``).

    ``last_frame_sent`` / ``last_frame_received`` are the byte sizes of the latest pipe frames;
    ``shm_bytes_sent`` / ``shm_bytes_received`` count payload bytes that went through shared
    memory instead of the pipe; ``replies_discarded``: late replies to cancelled or timed-out calls.
    """

    calls: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    pipe_bytes_sent: int = 0
    pipe_bytes_received: int = 0
    last_frame_sent: int = 0
    last_frame_received: int = 0
    shm_bytes_sent: int = 0
    shm_bytes_received: int = 0
    replies_discarded: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _Counters:
    """The live counters behind :class:`ProxyStats` (plain attributes: bumped on every frame)."""

    __slots__ = tuple(field.name for field in dataclasses.fields(ProxyStats))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> ProxyStats:
        return ProxyStats(**{name: getattr(self, name) for name in self.__slots__})


_LIVE: "weakref.WeakSet[Link]" = weakref.WeakSet()
_STOPPERS: set[threading.Thread] = set()  # background stops in flight, finished at exit

# Names the proxy never forwards: Python's protocols (copy, pickle, numpy, IPython probe them
# with getattr and would otherwise get a remote member) and the handle's own slot.

class Link:
    """The machinery behind one :class:`ProcessProxy`: the child, the pipe, the calls in flight."""

    def __init__(self) -> None:
        # Bound when the child has been spawned (by the start thread, see _bind).
        self._process = None
        self._conn = None
        self._fd = -1
        self._sentinel = -1
        self._pid: int | None = None
        self._pool: Pool | None = None
        self._chan: Channel | None = None
        self._token = ""
        self._waiter = None  # blocking callers wait on the pipe and the sentinel
        self._sentinel_poll = None
        self._finalizer = None
        self._peer = Peer()
        self._lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._state = _STARTING
        self._dead_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._live_timer: asyncio.TimerHandle | None = None
        self._releases: list[str] = []
        self._flush_scheduled = False
        self._stopped = threading.Event()
        self._exitcode: int | None = None
        self._dying = False
        self._death_loop: asyncio.AbstractEventLoop | None = None
        self._counters = _Counters()
        self.exit_timeout = 1.0  # seconds the child gets at interpreter exit (set_exit_timeout)
        # The start: finished (either way) once _started is True and _launched is set.
        self._started = False
        self._launched = threading.Event()
        self._start_error: BaseException | None = None
        self._start_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._kill_on_stop = False
        _LIVE.add(self)

    def describe(self) -> str:
        return f"pid={self._pid} {self._state}"

    def running(self) -> bool:
        return self._state == _RUNNING and self._poll_exitcode() is None

    # ----------------------------------------------------------------- the start

    def run_start(self, launch: Callable[[], tuple], start_timeout: float) -> None:
        """Spawn the child and wait for its READY (in the start thread, at SCHED_OTHER)."""
        error: BaseException | None = None
        try:
            demote_to_normal()
            deadline = time.monotonic() + start_timeout
            process, conn, pool, token = launch()
            ready = SyncWaiter()
            if self._bind(process, conn, pool, token, ready):
                if not self._wait_sync(ready, deadline):
                    error = OffloadError(f"the mpify child process did not become ready within {start_timeout} s")
                else:
                    ready.result()  # raises the factory's error, or why the child died or stopped
        except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the proxy
            error = exc
        finally:
            self._finish_start(error)  # always: callers wait for it

    def _bind(self, process, conn, pool: Pool, token: str, ready: SyncWaiter) -> bool:
        """Take the spawned child; False if a stop came first (the stopper then reaps it)."""
        with self._lock:
            self._process = process
            self._conn = conn
            self._fd = conn.fileno()
            self._sentinel = process.sentinel
            self._pid = process.pid
            self._pool = pool
            self._chan = Channel(self._fd)
            self._token = token
            self._waiter = select.poll()
            self._waiter.register(self._fd, select.POLLIN)
            self._waiter.register(self._sentinel, select.POLLIN)
            self._sentinel_poll = select.poll()
            self._sentinel_poll.register(self._sentinel, select.POLLIN)
            self._finalizer = weakref.finalize(self, _abandon, process, conn, pool, self._chan)
            self._finalizer.atexit = False
            if self._state != _STARTING:
                return False
            self._pending[0] = Pending(ready, None, None, "start")  # settled by READY, a death or a stop
            return True

    def _finish_start(self, error: BaseException | None) -> None:
        try:
            with self._lock:
                stopping = self._state in (_STOPPING, _STOPPED)
            if error is not None and not stopping:
                self._start_error = error
                if self._begin_stop():
                    self._stop_now(0)  # reap before telling anyone: the caller sees no child left
        finally:
            with self._lock:
                self._started = True
                self._launched.set()
                waiters, self._start_waiters = self._start_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed
                pass

    async def until_started(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._started:
                return
            self._start_waiters.append((loop, fut))
        await fut  # each waiter has its own future: cancelling one leaves the others

    def wait_started_sync(self, timeout: float | None) -> bool:
        return self._launched.wait(timeout)

    # ----------------------------------------------------------------- requests

    def check_usable(self) -> None:
        state = self._state
        if state == _RUNNING and not self._dying:
            return
        if self._start_error is not None:
            raise self._start_error
        if state == _RUNNING:
            raise WorkerCrashedError(f"the mpify child process (pid {self._pid}) is exiting")
        if state == _CRASHED:
            raise WorkerCrashedError(self._dead_reason)
        if state in (_STOPPING, _STOPPED):
            raise WorkerStoppedError(f"the mpify child process (pid {self._pid}) was stopped")
        raise OffloadError("the mpify child process is not ready yet")

    def _submit(self, kind: int, payload: Any, fut, loop, label: str) -> None:
        self.check_usable()
        data, segment = encode(payload, self._pool)
        with self._lock:
            if self._state != _RUNNING or self._dying:
                if segment is not None:
                    self._pool.release(segment[0])
                self.check_usable()
            rid = next(self._ids)
            self._pending[rid] = Pending(fut, loop, segment[0] if segment else None, label)
            try:
                self._send_locked(kind, rid, data, segment)
            except OSError:
                self._pending.pop(rid, None)
                if segment is not None:
                    self._pool.release(segment[0])
                crashed = True
            else:
                crashed = False
                self._counters.calls += 1
                self._counters.shm_bytes_sent += segment_bytes(segment)
        if crashed:  # the readers report the death of the child with its exit code
            self._dying = True
            if self._poll_exitcode() is not None:
                raise WorkerCrashedError(_death_reason(self._pid, self._exitcode))
            raise WorkerCrashedError(f"the mpify child process (pid {self._pid}) is exiting")

    def _send_locked(self, kind: int, rid: int, data, segment=None) -> None:
        releases = self._releases
        if releases:
            self._releases = []
        frame = pack_frame(kind, rid, data, segment, releases or None, self._pool.take_forgotten())
        self._chan.send(frame)
        self._counters.frames_sent += 1
        self._counters.pipe_bytes_sent += len(frame)
        self._counters.last_frame_sent = len(frame)

    async def request(self, kind: int, payload: Any, label: str) -> Any:
        if not self._started:  # the first calls wait for the child
            await self.until_started()
        loop = self._attach()
        fut = loop.create_future()
        self._submit(kind, payload, fut, loop, label)
        if self._live_timer is None:
            self._live_timer = loop.call_later(0.5, self._check_alive)
        return await fut

    def request_sync(self, kind: int, payload: Any, label: str, timeout: float | None = None) -> Any:
        if self._started:
            self.check_usable()  # a stopped or dead proxy says so first
        if running_loop() is not None:
            raise RuntimeError(
                f"{label!r}: call_sync()/get_sync() would block the running event loop; "
                "use await proxy.call(...) / await proxy.get(...) there"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._started and not self._launched.wait(timeout):
            raise CallTimeoutError(f"{label!r}: the mpify child process did not start within {timeout} s")
        self.check_usable()
        fut = SyncWaiter()
        self._submit(kind, payload, fut, None, label)
        if not self._wait_sync(fut, deadline):
            fut.set_exception(CallTimeoutError(f"{label!r} got no reply from the child process "
                                               f"(pid {self._pid}) within {timeout} s"))
        return fut.result()  # releases ride on the next request

    # ----------------------------------------------------------------- receiving

    def _attach(self) -> asyncio.AbstractEventLoop:
        """Make the running loop read this proxy's pipe (called on the loop's thread)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        self.check_usable()
        old = self._loop
        if old is not None:
            if not old.is_closed() and old.is_running():
                raise RuntimeError("this ProcessProxy is in use by another running event loop")
            self._remove_readers(old)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._live_timer = None
        loop.add_reader(self._fd, self._on_readable)
        loop.add_reader(self._sentinel, self._on_sentinel)
        return loop

    def _remove_readers(self, loop) -> None:
        for fd in (self._fd, self._sentinel):
            try:
                loop.remove_reader(fd)
            except Exception:  # noqa: BLE001 - closed loop
                pass
        timer, self._live_timer = self._live_timer, None
        if timer is not None:
            timer.cancel()

    def _detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        if self._loop_thread == threading.get_ident() or not loop.is_running():
            self._remove_readers(loop)
            return
        done = threading.Event()

        def remove() -> None:
            self._remove_readers(loop)
            done.set()

        try:
            loop.call_soon_threadsafe(remove)
        except RuntimeError:
            return
        done.wait(2.0)

    def _on_readable(self) -> None:
        if not self._recv_lock.acquire(blocking=False):
            return  # another thread is reading and will dispatch
        try:
            if not self._drain():
                self._pipe_closed()
        finally:
            self._recv_lock.release()

    def _on_sentinel(self) -> None:
        if not self._recv_lock.acquire(blocking=False):
            return
        try:
            self._child_exited()
        finally:
            self._recv_lock.release()

    def _check_alive(self) -> None:
        self._live_timer = None
        if self._state not in (_STARTING, _RUNNING) or self._loop is None:
            return
        if self._poll_exitcode() is not None:
            self._on_sentinel()
        elif self._pending:
            self._live_timer = self._loop.call_later(0.5, self._check_alive)

    def _drain(self) -> bool:
        """Handle every frame available now; False at EOF."""
        reader = self._chan
        alive = reader.fill(False)
        while True:
            frame = reader.next_frame()
            if frame is None:
                return alive
            self._handle(frame)

    def _wait_sync(self, fut, deadline: float | None) -> bool:
        """Block until ``fut`` is done (reading the pipe here unless a loop does); False on timeout."""
        while not fut.done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            step = 0.1 if remaining is None else min(0.1, remaining)
            loop = self._loop
            if loop is not None and not loop.is_closed() and loop.is_running():
                fut.wait(step)  # that loop's reader settles it
                continue
            if not self._recv_lock.acquire(blocking=False):
                fut.wait(min(step, 0.01))
                continue
            try:
                if fut.done():
                    break
                if self._state in (_STOPPING, _STOPPED):
                    fut.wait(step)
                    continue
                try:
                    ready = [fd for fd, _ in self._waiter.poll(max(1, int(step * 1000)))]
                except (OSError, ValueError):
                    ready = []
                if self._fd in ready:
                    if not self._drain():
                        self._pipe_closed()
                elif ready:
                    self._child_exited()
            finally:
                self._recv_lock.release()
        return True

    def _handle(self, frame: bytes) -> None:
        stats = self._counters
        stats.frames_received += 1
        stats.pipe_bytes_received += len(frame)
        stats.last_frame_received = len(frame)
        kind, rid, segment, _releases, forgets, data = unpack_frame(frame)
        if forgets:
            self._peer.forget(forgets)
        with self._lock:
            entry = self._pending.pop(rid, None)
            if entry is not None and entry.segment is not None:
                self._pool.release(entry.segment)
            if kind == READY and self._state == _STARTING:
                self._state = _RUNNING
        alive = entry is not None and not entry.fut.done()
        result = error = None
        if alive:
            stats.shm_bytes_received += segment_bytes(segment)
            try:
                if kind == RESULT:
                    result = decode(data, segment, self._peer)
                elif kind == READY:
                    result = pickle.loads(data)
                else:  # ERROR, INIT_ERROR
                    error = rebuild_exception(pickle.loads(data))
            except Exception as exc:  # noqa: BLE001 - e.g. a class the parent cannot import
                error = OffloadError(f"the reply to {entry.label!r} could not be unpickled: {exc!r}")
                error.__cause__ = exc
        elif kind in (RESULT, ERROR):
            stats.replies_discarded += 1
        if alive:
            settle(entry, result, error)  # first, so the woken task runs before the flush
        if segment is not None:
            with self._lock:
                self._releases.append(segment[0])
            self._flush_soon()

    def _flush_soon(self) -> None:
        loop = self._loop
        if (
            loop is not None
            and self._loop_thread == threading.get_ident()
            and loop.is_running()
        ):
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)  # runs after the woken task had a chance to piggyback
        # else (a blocking caller): the releases ride on the next request

    def _flush(self) -> None:
        self._flush_scheduled = False
        with self._lock:
            if not self._releases and not self._pool._forgotten:
                return
            if self._state != _RUNNING:
                self._releases = []
                return
            try:
                self._send_locked(CONTROL, 0, b"")
            except OSError:
                pass  # the death is noticed by the readers

    def _in_loop_thread(self) -> bool:
        """True inside a callback of the running loop this proxy is attached to."""
        loop = self._loop
        return loop is not None and self._loop_thread == threading.get_ident() and loop.is_running()

    def _pipe_closed(self) -> None:
        """EOF on the pipe: the child is exiting. Report it once its exit code is known."""
        self._dying = True
        if self._in_loop_thread():
            try:
                self._loop.remove_reader(self._fd)
            except Exception:  # noqa: BLE001
                pass
            # The sentinel reader normally fires within a millisecond; this is the fallback
            # for a child that closed its pipe and lives on.
            self._loop.call_later(0.5, self._give_up_on_exit)
            return
        deadline = time.monotonic() + 0.5  # a blocking caller waits for the exit right here
        while self._poll_exitcode() is None and time.monotonic() < deadline:
            try:
                self._sentinel_poll.poll(10)
            except (OSError, ValueError):  # pragma: no cover
                break
        if self._poll_exitcode() is None:
            self._give_up_on_exit()
        else:
            self._child_exited()

    def _give_up_on_exit(self) -> None:
        if self._state in (_STARTING, _RUNNING):
            self._kill()  # it closed its pipe: useless, and it must not linger
            self._mark_dead(_death_reason(self._pid, self._poll_exitcode(), self._state == _STARTING))

    def _child_exited(self, attempt: int = 0) -> None:
        """The process ended: deliver what it wrote, fail the rest, clean up its segments."""
        if self._state in (_STOPPING, _STOPPED):
            return
        if attempt == 0:
            self._dying = True
            self._drain()  # replies written before the death still count
            if self._in_loop_thread():
                self._death_loop = self._loop
            self._detach()  # the sentinel stays readable: its reader must go
        code = self._poll_exitcode()
        if code is None and attempt < 50:
            # The sentinel fires a moment before the child can be reaped (exit code known).
            loop = self._death_loop
            if loop is not None and not loop.is_closed() and loop.is_running():
                loop.call_later(0.002, self._child_exited, attempt + 1)
                return
            time.sleep(0.002)  # a blocking caller
            self._child_exited(attempt + 1)
            return
        self._mark_dead(_death_reason(self._pid, code, self._state == _STARTING))
        if code is not None and self._state == _CRASHED:
            self._pool.unlink_all()
            self._peer.close_all()
            unlink_prefix(f"afk{self._token}c")

    def _mark_dead(self, reason: str) -> None:
        with self._lock:
            if self._state not in (_STARTING, _RUNNING):
                return
            self._state = _CRASHED
            self._dead_reason = reason
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            settle(entry, error=WorkerCrashedError(reason))

    def _poll_exitcode(self) -> int | None:
        if self._exitcode is None and self._process is not None:
            try:
                self._exitcode = self._process.exitcode
            except ValueError:  # process object closed
                pass
        return self._exitcode

    # ----------------------------------------------------------------- stopping

    def _begin_stop(self) -> bool:
        with self._lock:
            if self._state in (_STOPPING, _STOPPED):
                return False
            self._kill_on_stop = self._state == _STARTING  # nothing to finish: no need to wait
            self._state = _STOPPING
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            settle(entry, error=WorkerStoppedError(f"the mpify child process (pid {self._pid}) was stopped"))
        if self._finalizer is not None:
            self._finalizer.detach()
        _LIVE.discard(self)
        return True

    def stop_blocking(self, timeout: float | None) -> None:
        if not self._begin_stop():
            return
        self._launched.wait()  # the stop settled the start's wait: it ends within 0.1 s
        self._stop_now(timeout)

    def stop_soon(self, timeout: float | None) -> None:
        """Stop from a running event loop's thread: the readers go now, the wait for the exit
        happens in a helper thread (joining the child here would block the loop)."""
        if not self._begin_stop():
            return
        if self._in_loop_thread():
            self._detach()
        thread = threading.Thread(target=self._stop_in_thread, args=(timeout,),
                                  name="aiofranka-mpify-stop", daemon=True)
        _STOPPERS.add(thread)
        thread.start()

    def _stop_in_thread(self, timeout: float | None) -> None:
        demote_to_normal()
        try:
            self._launched.wait()
            self._stop_now(timeout)
        finally:
            _STOPPERS.discard(threading.current_thread())

    def _stop_now(self, timeout: float | None) -> None:
        """Ask the child to exit, wait up to ``timeout`` s, kill it, reap it (blocks; after _begin_stop)."""
        process = self._process
        if process is None:  # it was never spawned
            self._finish_stop()
            return
        self._detach()
        self._send_stop()
        try:
            if self._kill_on_stop:
                self._kill()
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join(2.0)
        except (ValueError, AssertionError):  # pragma: no cover - already closed
            pass
        self._finish_stop()

    async def astop(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        if not self._begin_stop():
            while not self._stopped.is_set():
                await asyncio.sleep(0.005)
            return
        while not self._launched.is_set():  # the stop settled the start's wait: within 0.1 s
            await asyncio.sleep(0.005)
        if self._process is None:
            self._finish_stop()
            return
        self._detach()
        self._send_stop()
        if self._kill_on_stop:
            self._kill()
        if not await self._wait_exit(loop, timeout):
            self._kill()
            await self._wait_exit(loop, 2.0)
        for _ in range(200):  # the sentinel fires a moment before the child is reapable
            if self._poll_exitcode() is not None:
                break
            await asyncio.sleep(0.001)
        self._finish_stop()

    def _send_stop(self) -> None:
        with self._lock:
            try:
                self._chan.send(pack_frame(STOP, 0, b""))
            except (OSError, ValueError):
                pass

    def _kill(self) -> None:
        try:
            if self._poll_exitcode() is None:
                self._process.kill()
        except (OSError, ValueError, AttributeError):  # pragma: no cover
            pass

    async def _wait_exit(self, loop, timeout: float | None) -> bool:
        if self._poll_exitcode() is not None:
            return True
        fut = loop.create_future()

        def exited() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(self._sentinel, exited)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(self._sentinel)

    def _finish_stop(self) -> None:
        got = self._recv_lock.acquire(timeout=2.0)
        try:
            if self._conn is not None:
                try:
                    self._conn.close()
                except OSError:
                    pass
            if self._chan is not None:
                self._chan.close()
        finally:
            if got:
                self._recv_lock.release()
        if self._pool is not None:
            self._pool.unlink_all()
        self._peer.close_all()
        if self._token:
            unlink_prefix(f"afk{self._token}c")
        if self._finalizer is not None:  # bound after the stop began
            self._finalizer.detach()
        with self._lock:
            self._state = _STOPPED
        process = self._process
        try:
            if process is not None and self._poll_exitcode() is not None:
                process.join(0)
                process.close()
        except (ValueError, AssertionError):  # pragma: no cover
            pass
        self._stopped.set()


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _abandon(process, conn, pool: Pool, reader: Channel) -> None:
    """Finaliser of a proxy dropped without stop(): let the child go, never block."""
    try:
        reader.send(pack_frame(STOP, 0, b""))
    except (OSError, ValueError):
        pass
    try:
        conn.close()
    except OSError:
        pass
    reader.close()
    pool.unlink_all()


@atexit.register
def _stop_all_at_exit() -> None:
    # Runs before multiprocessing's own exit hook joins the (non-daemonic) children.
    for link in list(_LIVE):
        try:
            link.stop_blocking(link.exit_timeout)
        except Exception:  # noqa: BLE001
            pass
    for thread in list(_STOPPERS):
        thread.join(3.0)


