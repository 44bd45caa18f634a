"""Run an object in a spawned child process and call it from asyncio without blocking the loop.

:func:`mpify` (blocking, for set-up code) and :func:`ampify` (a coroutine, safe while the
robot runs) build an object in a child process started with the ``spawn`` context and hand
back a :class:`ProcessProxy` whose methods are coroutines::

    proxy = await ampify(Policy, "weights.pt")     # Policy("weights.pt") runs in the child
    action = await proxy.act(observation)          # Policy.act(observation) runs in the child
    await proxy.astop()

Design
------
Start-up
    The factory and its arguments are serialised with cloudpickle (so lambdas, closures and
    classes defined in ``__main__`` work) and passed to the child with the process arguments.
    The child first resets its scheduling policy to ``SCHED_OTHER`` (pylibfranka promotes the
    thread that builds a ``Robot`` to ``SCHED_FIFO 99``, and children inherit it), ignores
    ``SIGINT`` (Ctrl-C is the parent's decision), builds the object and answers ``READY``.
    The process is always started from a short-lived helper thread that has demoted itself to
    ``SCHED_OTHER``: :func:`ampify` never blocks the event loop (the start costs 0.4-1.9 s),
    and the handshake is awaited with ``loop.add_reader`` on the pipe. (The helper thread
    runs Python code for a few milliseconds, so like any thread it can hold the GIL for up to
    ``sys.getswitchinterval()`` at a time.)

``if __name__ == "__main__":``
    A spawned child re-imports the user's main script. A script that calls :func:`mpify` at
    its top level without the guard would start a child that starts a child, or open a second
    robot connection. Before spawning, the parent checks whether the call comes from the main
    script's top level outside an ``if __name__ == "__main__":`` block and raises
    ``RuntimeError`` saying so; a call made while a child is still importing the main module
    raises the same error at once instead of spawning again.

Protocol
    One duplex ``multiprocessing.Pipe`` (a Unix socket pair); every message is one frame,
    length-prefixed like ``Connection.send_bytes``::

        struct "<BQI"  kind, request id, descriptor length
        descriptor     pickled (segment, releases, forgets), or empty
        data           the payload pickled with protocol 5

    Kinds: CALL, GETATTR, STOP and CONTROL (releases only) from the parent; READY,
    INIT_ERROR, RESULT and ERROR from the child. Requests carry a fresh id and replies name
    it, so any number of calls may be in flight; the child serves them one at a time, in order
    (FIFO). The parent reads replies in a ``loop.add_reader`` callback on its end of the pipe
    (never the default executor): one non-blocking ``recv_into`` takes every frame available,
    a half-written frame waits in a buffer (the loop never blocks on it), and each reply
    resolves the future registered under its id. Blocking callers (``call_sync``) poll the
    pipe and the sentinel themselves, unless a running loop in another thread already reads.

Shared memory
    Payloads are pickled with protocol 5 and a ``buffer_callback``: every out-of-band buffer of
    4 KiB or more (NumPy arrays of any dtype and shape, C- or Fortran-ordered; a
    non-contiguous array is made contiguous first) is copied into a POSIX shared-memory
    segment and only ``(segment, offset, length)`` travels through the pipe. Pickled data
    larger than 64 KiB goes into the segment as well, so pipe frames stay small. The receiver
    maps the segment once (cached), copies the bytes out and rebuilds the objects with
    ``pickle.loads(data, buffers=...)``.

    Each direction has a pool of segments owned by its sender (created with mode 0600 and
    ``posix_fallocate`` so a full ``/dev/shm`` fails cleanly instead of raising ``SIGBUS``).
    A request's segment returns to the parent's pool when its reply arrives (the child copies
    a request before running it); a reply's segment returns to the child's pool when the
    parent's next frame says it has copied it (releases ride on the next request, or on a small
    control frame sent right after the awaiting task resumed). Pools grow on demand
    (power-of-two sizes, at least 64 KiB), keep at most four idle segments, and tell the peer
    to unmap the ones they unlink. Receivers map segments without registering them with
    Python's ``resource_tracker`` (the parent and child share one tracker, which would
    otherwise unlink or double-count segments it does not own). Everything is unlinked on
    stop, by the child when it exits, and by the parent when the child died.

Cancellation
    Cancelling an ``await proxy.method(...)`` cancels only the wait: the child still runs the
    call (it cannot be interrupted), and its reply is discarded when it arrives.

Worker death
    The parent watches both the pipe (EOF) and the process sentinel (``add_reader``), plus
    a 0.5 s exit-code poll while calls are pending. When the child dies (killed, crashed,
    ``os._exit``) every pending call and every later call raises
    :class:`~aiofranka.exceptions.WorkerCrashedError`, typically within milliseconds. The
    child exits when the parent dies: it sees EOF on the pipe, and a watchdog thread checks
    ``os.getppid()`` every 0.2 s in case the child is busy.

Errors
    An exception raised in the child is re-raised at the ``await`` as its own type, with
    ``__cause__`` set to :class:`~aiofranka.exceptions.RemoteTraceback` (the child's formatted
    traceback). An exception that cannot be pickled (or unpickled) arrives as
    :class:`~aiofranka.exceptions.RemoteError`.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import copyreg
import functools
import inspect
import io
import itertools
import math
import mmap
import multiprocessing
import multiprocessing.process
import os
import pickle
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types
import weakref
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable

from .exceptions import (
    CallTimeoutError,
    OffloadError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashedError,
    WorkerStoppedError,
)

try:  # POSIX shared memory; absent on Windows, where payloads simply stay in the pipe
    import _posixshmem
except ImportError:  # pragma: no cover - not on Linux
    _posixshmem = None

__all__ = ["DEFAULT_ARENA_BYTES", "ProcessProxy", "ProxyStats", "ampify", "mpify"]

#: Size of the shared-memory segment each side creates at start (per direction).
DEFAULT_ARENA_BYTES = 1 << 20

_HDR = struct.Struct("<BQI")
_LEN = struct.Struct("!i")  # multiprocessing.Connection's frame length prefix
_LEN64 = struct.Struct("!Q")
_CALL, _GETATTR, _STOP, _CONTROL = 1, 2, 3, 4
_READY, _RESULT, _ERROR, _INIT_ERROR = 10, 11, 12, 13

_INLINE_MAX = 4096  # out-of-band buffers smaller than this stay in the pickle stream
_INBAND_MAX = 64 * 1024  # pickled data larger than this goes into shared memory too
_MIN_SEGMENT = 64 * 1024
_MAX_IDLE_SEGMENTS = 4
_ALIGN = 64
_SHM_DIR = "/dev/shm"

_STARTING, _RUNNING, _CRASHED, _STOPPING, _STOPPED = "starting", "running", "crashed", "stopping", "stopped"

_GUARD_HELP = (
    "mpify()/ampify() was called while the main script is being imported{where}. A spawned "
    "child process re-imports the main script, so the code that starts a child process must "
    "not run at import time; otherwise every child starts another child (and re-runs "
    "everything above the call, such as opening a robot connection). Put the script's "
    "top-level code under a guard:\n\n"
    "    if __name__ == \"__main__\":\n"
    "        main()\n"
)


# --------------------------------------------------------------------------- helpers


def _demote_current_thread() -> None:
    """Reset the calling thread to SCHED_OTHER if it runs SCHED_FIFO or SCHED_RR."""
    try:
        policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()  # None outside a running loop, without raising


_AWAITABLE_TYPES: dict[type, bool] = {}


def _is_awaitable(value: Any) -> bool:
    """``inspect.isawaitable`` with a per-type cache (it is asked about every result)."""
    kind = type(value)
    known = _AWAITABLE_TYPES.get(kind)
    if known is None:
        known = hasattr(kind, "__await__")
        if len(_AWAITABLE_TYPES) < 512:
            _AWAITABLE_TYPES[kind] = known
    return known or (kind is types.GeneratorType and inspect.isawaitable(value))


def _cloudpickle():
    import cloudpickle

    return cloudpickle


def _check_not_bootstrapping() -> None:
    """Raise if this process is a spawned child still importing the main module."""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise RuntimeError(_GUARD_HELP.format(where=" by a spawned child process"))


def _main_call_site() -> tuple[str, int] | None:
    """(file, line) of the main script's top-level statement that led to this call, if any."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None) is None:
        return None  # interactive session or ``python -c``: spawn does not re-import anything
    main_globals = main.__dict__
    site = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            site = (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return site


def _main_test(test: ast.expr) -> str | None:
    """'eq' / 'ne' when ``test`` is ``__name__ == "__main__"`` (either side) / ``!=``."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and len(test.comparators) == 1):
        return None
    sides = (test.left, test.comparators[0])
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    if len(names) != 1 or len(consts) != 1:
        return None
    if isinstance(test.ops[0], ast.Eq):
        return "eq"
    if isinstance(test.ops[0], ast.NotEq):
        return "ne"
    return None


@functools.lru_cache(maxsize=16)
def _guard_ranges(filename: str, mtime: float) -> tuple[tuple[int, int], ...] | None:
    try:
        with open(filename, "rb") as handle:
            tree = ast.parse(handle.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None
    ranges = []
    for node in tree.body:
        if isinstance(node, ast.If):
            kind = _main_test(node.test)
            body = node.body if kind == "eq" else node.orelse if kind == "ne" else []
            if body:
                ranges.append((body[0].lineno, max(n.end_lineno or n.lineno for n in body)))
    return tuple(ranges)


def _check_main_guard(site: tuple[str, int] | None) -> None:
    """Raise RuntimeError if ``site`` is a top-level line of the main script outside the guard."""
    if site is None:
        return
    filename, lineno = site
    try:
        mtime = os.stat(filename).st_mtime
    except OSError:
        return
    ranges = _guard_ranges(filename, mtime)
    if ranges is None or any(start <= lineno <= end for start, end in ranges):
        return
    raise RuntimeError(_GUARD_HELP.format(where=f" (called from {filename}, line {lineno}, at the top level)"))


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


# --------------------------------------------------------------------------- shared memory


def _fallocate(fd: int, size: int) -> None:
    """Reserve the pages now: a full /dev/shm then fails here instead of with SIGBUS later."""
    import errno

    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _unlink_name(name: str, tracked: bool) -> None:
    try:
        _posixshmem.shm_unlink("/" + name)
    except OSError:
        return
    if tracked:
        try:
            resource_tracker.unregister("/" + name, "shared_memory")
        except Exception:  # noqa: BLE001 - best effort
            pass


def _unlink_prefix(prefix: str) -> None:
    """Unlink every segment whose name starts with ``prefix`` (left by a dead process)."""
    if _posixshmem is None:
        return
    try:
        names = os.listdir(_SHM_DIR)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            _unlink_name(name, tracked=True)


class _Owned:
    """A segment this side created (a ``SharedMemory``), reused for many messages."""

    __slots__ = ("name", "size", "buf", "_shm")

    def __init__(self, name: str, size: int) -> None:
        shm = SharedMemory(name=name, create=True, size=size)  # mode 0600, tracked
        try:
            _fallocate(shm._fd, size)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        self._shm = shm
        self.name = name
        self.size = shm.size
        self.buf = shm.buf

    def unlink(self) -> None:
        self.buf = None
        try:
            self._shm.unlink()
        except OSError:
            pass
        try:
            self._shm.close()
        except (BufferError, OSError):  # pragma: no cover - a view still alive
            pass


class _Mapped:
    """A peer's segment mapped here without telling the resource tracker."""

    __slots__ = ("name", "buf", "_mmap")

    def __init__(self, name: str) -> None:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.name = name
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        try:
            self.buf.release()
            self._mmap.close()
        except (BufferError, ValueError):  # pragma: no cover - a view still alive
            pass


class _Pool:
    """The segments one side sends with: idle ones are reused, busy ones await release."""

    def __init__(self, prefix: str, arena_bytes: int) -> None:
        self.prefix = prefix
        self._counter = itertools.count()
        self._idle: list[_Owned] = []
        self._busy: dict[str, _Owned] = {}
        self._forgotten: list[str] = []
        self._lock = threading.Lock()
        self.created = 0
        self.closed = False
        if arena_bytes > 0 and _posixshmem is not None:
            self._idle.append(self._new(arena_bytes))

    def _new(self, size: int) -> _Owned:
        for _ in range(8):
            name = f"{self.prefix}{next(self._counter)}"
            try:
                seg = _Owned(name, size)
            except FileExistsError:
                continue
            self.created += 1
            return seg
        raise FileExistsError(f"could not create a shared-memory segment named {self.prefix}*")

    def acquire(self, nbytes: int) -> _Owned:
        with self._lock:
            if self.closed:
                raise OSError("the shared-memory pool is closed")
            best = None
            for seg in self._idle:
                if seg.size >= nbytes and (best is None or seg.size < best.size):
                    best = seg
            if best is None:
                best = self._new(max(_MIN_SEGMENT, 1 << max(0, nbytes - 1).bit_length()))
            else:
                self._idle.remove(best)
            self._busy[best.name] = best
            return best

    def release(self, name: str) -> None:
        with self._lock:
            seg = self._busy.pop(name, None)
            if seg is None:
                return
            self._idle.append(seg)
            if len(self._idle) > _MAX_IDLE_SEGMENTS:
                victim = min(self._idle, key=lambda s: s.size)
                self._idle.remove(victim)
                victim.unlink()
                self._forgotten.append(victim.name)

    def take_forgotten(self) -> list[str] | None:
        if not self._forgotten:
            return None
        with self._lock:
            names, self._forgotten = self._forgotten, []
        return names

    def names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._idle] + list(self._busy)

    def unlink_all(self) -> None:
        with self._lock:
            self.closed = True
            segs = self._idle + list(self._busy.values())
            self._idle, self._busy = [], {}
        for seg in segs:
            seg.unlink()


class _Peer:
    """Mappings of the other side's segments, by name."""

    def __init__(self) -> None:
        self._maps: dict[str, _Mapped] = {}

    def view(self, name: str) -> memoryview:
        mapped = self._maps.get(name)
        if mapped is None:
            mapped = self._maps[name] = _Mapped(name)
        return mapped.buf

    def forget(self, names) -> None:
        for name in names:
            mapped = self._maps.pop(name, None)
            if mapped is not None:
                mapped.close()

    def close_all(self) -> None:
        self.forget(list(self._maps))


# --------------------------------------------------------------------------- serialisation

def _rebuild_ndarray(buffer, dtype: str, shape: tuple, fortran: bool):
    """Inverse of :func:`_reduce_ndarray` (``buffer`` is 1-D: in-band bytes or our copy)."""
    import numpy

    array = numpy.frombuffer(buffer, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


def _reduce_ndarray(array):
    """A lean protocol-5 reducer: plain dtypes go out of band as one contiguous buffer.

    Non-contiguous arrays are made contiguous first (NumPy's own reducer would copy them
    into the pickle stream); Fortran-ordered ones keep their order.
    """
    dtype = array.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return array.__reduce_ex__(5)
    if array.flags.c_contiguous:
        return _rebuild_ndarray, (pickle.PickleBuffer(array), dtype.str, array.shape, False)
    if not array.flags.f_contiguous:
        import numpy

        array = numpy.ascontiguousarray(array)
        return _rebuild_ndarray, (pickle.PickleBuffer(array), dtype.str, array.shape, False)
    return _rebuild_ndarray, (pickle.PickleBuffer(array.T), dtype.str, array.shape, True)


class _Pickler(pickle.Pickler):
    """Protocol-5 pickler whose dispatch table adds :func:`_reduce_ndarray`."""

    dispatch_table: dict = {}
    _copyreg_size = -1


def _pickler_class():
    """The pickler to use: plain ``pickle`` until NumPy is imported, then :class:`_Pickler`."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if _Pickler._copyreg_size != len(copyreg.dispatch_table):  # refresh if copyreg changed
        table = dict(copyreg.dispatch_table)
        table[numpy.ndarray] = _reduce_ndarray
        _Pickler.dispatch_table = table
        _Pickler._copyreg_size = len(copyreg.dispatch_table)
    return _Pickler


def _pickle(obj: Any, out_of_band: bool) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []
    callback = None
    if out_of_band:

        def callback(picklebuffer):
            raw = picklebuffer.raw()
            if raw.nbytes < _INLINE_MAX:
                return True  # small: in-band is cheaper than a segment
            buffers.append(raw)
            return False

    try:
        pickler = _pickler_class()
        if pickler is None:
            return pickle.dumps(obj, 5, buffer_callback=callback), buffers
        stream = io.BytesIO()
        pickler(stream, 5, buffer_callback=callback).dump(obj)
        return stream.getvalue(), buffers
    except Exception:  # noqa: BLE001 - lambdas, local classes ...: retry with cloudpickle
        for raw in buffers:
            raw.release()
        buffers.clear()
    stream = io.BytesIO()
    _cloudpickle().CloudPickler(stream, protocol=5, buffer_callback=callback).dump(obj)
    return stream.getvalue(), buffers


def _encode(obj: Any, pool: _Pool | None) -> tuple[bytes, tuple | None]:
    """Pickle ``obj``; large buffers go into a segment of ``pool``. Returns (data, segment)."""
    data, buffers = _pickle(obj, pool is not None)
    if pool is None or (not buffers and len(data) <= _INBAND_MAX):
        return data, None
    regions = []
    offset = 0
    for raw in buffers:
        regions.append((offset, raw.nbytes))
        offset = -(-(offset + raw.nbytes) // _ALIGN) * _ALIGN
    data_region = None
    if len(data) > _INBAND_MAX:
        data_region = (offset, len(data))
        offset += len(data)
    try:
        seg = pool.acquire(max(offset, 1))
    except OSError:  # /dev/shm full or unavailable: everything through the pipe
        for raw in buffers:
            raw.release()
        data, _ = _pickle(obj, False)
        return data, None
    view = seg.buf
    for (start, length), raw in zip(regions, buffers):
        view[start : start + length] = raw
        raw.release()
    if data_region is not None:
        view[data_region[0] : data_region[0] + data_region[1]] = data
        data = b""
    return data, (seg.name, regions, data_region)


def _decode(data, segment: tuple | None, peer: _Peer) -> Any:
    """Rebuild a payload, copying its buffers out of the peer's segment."""
    if segment is None:
        return pickle.loads(data)
    name, regions, data_region = segment
    view = peer.view(name)
    buffers = [bytearray(view[start : start + length]) for start, length in regions]
    if data_region is not None:
        data = bytes(view[data_region[0] : data_region[0] + data_region[1]])
    return pickle.loads(data, buffers=buffers)


def _segment_bytes(segment: tuple | None) -> int:
    if segment is None:
        return 0
    total = sum(length for _, length in segment[1])
    return total + (segment[2][1] if segment[2] else 0)


def _frame(kind: int, rid: int, data, segment=None, releases=None, forgets=None) -> bytes:
    """The bytes to write for one message, with ``Connection.send_bytes``'s length prefix."""
    if segment is None and not releases and not forgets:
        desc = b""
    else:
        desc = pickle.dumps((segment, releases, forgets), 5)
    n = _HDR.size + len(desc) + len(data)
    prefix = _LEN.pack(n) if n <= 0x7FFFFFFF else _LEN.pack(-1) + _LEN64.pack(n)
    return b"".join((prefix, _HDR.pack(kind, rid, len(desc)), desc, data))


def _parse(frame: bytes):
    kind, rid, dlen = _HDR.unpack_from(frame)
    start = _HDR.size
    if dlen:
        segment, releases, forgets = pickle.loads(frame[start : start + dlen])
    else:
        segment = releases = forgets = None
    return kind, rid, segment, releases, forgets, memoryview(frame)[start + dlen :]


class _Channel:
    """One end of the pipe's socket, framed like ``Connection.send_bytes``.

    It reads every available frame with one ``recv_into`` and, unlike
    ``Connection.recv_bytes``, never blocks the caller on a half-written frame: a
    non-blocking :meth:`fill` keeps partial data until the rest arrives.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self._buf = bytearray()
        self._chunk = bytearray(1 << 18)
        self._view = memoryview(self._chunk)

    def fill(self, block: bool) -> bool:
        """Append what the socket holds (waiting for data if ``block``); False at EOF."""
        flags = 0 if block else socket.MSG_DONTWAIT
        size = len(self._chunk)
        while True:
            try:
                n = self._sock.recv_into(self._chunk, size, flags)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # reset, or closed under us
                return False
            if n == 0:
                return False
            self._buf += self._view[:n]
            if n < size:
                return True
            flags = socket.MSG_DONTWAIT  # the chunk was full: take the rest without waiting

    def send(self, wire: bytes) -> None:
        self._sock.sendall(wire)

    def next_frame(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = _LEN.unpack_from(buf)
        start = 4
        if n == -1:
            if len(buf) < 12:
                return None
            (n,) = _LEN64.unpack_from(buf, 4)
            start = 12
        end = start + n
        if len(buf) < end:
            return None
        frame = bytes(buf[start:end])
        del buf[:end]
        return frame

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass


def _exception_payload(exc: BaseException) -> tuple:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    blob = None
    for dumps in (pickle.dumps, lambda e, protocol: _cloudpickle().dumps(e, protocol=protocol)):
        try:
            blob = dumps(exc, protocol=5)
            break
        except Exception:  # noqa: BLE001 - fall back to RemoteError
            continue
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = "<str() failed>"
    return blob, f"{type(exc).__module__}.{type(exc).__qualname__}", message, text


def _rebuild_exception(payload: tuple) -> BaseException:
    blob, type_name, message, text = payload
    cause = RemoteTraceback(text)
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - e.g. a custom __init__ that unpickling cannot call
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        exc = RemoteError(f"{type_name}: {message}", type_name, text)
    exc.__cause__ = cause
    exc.__suppress_context__ = True
    return exc


# --------------------------------------------------------------------------- the child


class _Child:
    """The child's side: builds the object, then serves requests one at a time."""

    def __init__(self, conn, parent_pid: int, token: str, arena_bytes: int) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.token = token
        self.arena_bytes = arena_bytes
        self.pool: _Pool | None = None
        self.peer = _Peer()
        self.obj: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.parent_dead = False
        self.chan: _Channel | None = None
        self._cleaned = False
        self._cleanup_lock = threading.Lock()

    def run(self, blob: bytes) -> None:
        threading.Thread(target=self._watch_parent, name="aiofranka-mpify-watchdog", daemon=True).start()
        self.chan = _Channel(self.conn.fileno())
        try:
            try:
                self.pool = _Pool(f"afk{self.token}c", self.arena_bytes) if _posixshmem else None
                factory, args, kwargs = pickle.loads(blob)
                self.obj = factory(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                self._send(_INIT_ERROR, 0, pickle.dumps(_exception_payload(exc), 5))
                return
            self._send(_READY, 0, pickle.dumps(os.getpid(), 5))
            self._serve()
        except (BrokenPipeError, ConnectionError, EOFError):
            self._check_parent_gone()
        finally:
            self.cleanup()

    def _watch_parent(self) -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != self.parent_pid:
                self.parent_dead = True
                self.cleanup()
                os._exit(0)

    def _check_parent_gone(self) -> None:
        # On EOF the parent may be dying: it closes its files before the child is re-parented.
        for _ in range(20):
            if os.getppid() != self.parent_pid:
                self.parent_dead = True
                return
            time.sleep(0.005)

    def cleanup(self) -> None:
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
        close = getattr(self.obj, "_aiofranka_close", None)
        if close is not None:  # an object that must wind down first (server mode)
            try:
                close()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        if self.pool is not None:
            self.pool.unlink_all()
        self.peer.close_all()
        if self.parent_dead:
            _unlink_prefix(f"afk{self.token}p")  # the parent cannot clean its own any more
        if self.chan is not None:
            self.chan.close()
        try:
            self.conn.close()
        except OSError:
            pass

    def _send(self, kind: int, rid: int, data, segment=None) -> None:
        forgets = self.pool.take_forgotten() if self.pool is not None else None
        self.chan.send(_frame(kind, rid, data, segment, None, forgets))

    def _serve(self) -> None:
        reader = self.chan
        try:
            while True:
                frame = reader.next_frame()
                if frame is None:
                    if not reader.fill(True):
                        self._check_parent_gone()
                        return
                    continue
                kind, rid, segment, releases, forgets, data = _parse(frame)
                if releases and self.pool is not None:
                    for name in releases:
                        self.pool.release(name)
                if forgets:
                    self.peer.forget(forgets)
                if kind == _CALL or kind == _GETATTR:
                    self._dispatch(kind, rid, segment, data)
                elif kind == _STOP:
                    return
        finally:
            reader.close()

    def _dispatch(self, kind: int, rid: int, segment, data) -> None:
        try:
            payload = _decode(data, segment, self.peer)
            if kind == _CALL:
                name, args, kwargs = payload
                result = getattr(self.obj, name)(*args, **kwargs)
                if _is_awaitable(result):
                    if self.loop is None:
                        self.loop = asyncio.new_event_loop()
                    result = self.loop.run_until_complete(result)
            else:
                result = getattr(self.obj, payload)
                if inspect.isroutine(result):
                    raise TypeError(
                        f"{payload!r} is a method of the remote object; call it: "
                        f"await proxy.{payload}(...)"
                    )
        except Exception as exc:  # noqa: BLE001 - sent back typed
            self._send(_ERROR, rid, pickle.dumps(_exception_payload(exc), 5))
            return
        try:
            out, seg = _encode(result, self.pool)
        except Exception as exc:  # noqa: BLE001
            error = TypeError(f"the result could not be pickled: {exc!r}")
            self._send(_ERROR, rid, pickle.dumps(_exception_payload(error), 5))
            return
        self._send(_RESULT, rid, out, seg)


def _child_main(conn, blob: bytes, parent_pid: int, token: str, arena_bytes: int) -> None:
    """Entry point of the spawned child."""
    _demote_current_thread()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (OSError, ValueError):  # pragma: no cover
        pass
    _Child(conn, parent_pid, token, arena_bytes).run(blob)


# --------------------------------------------------------------------------- the parent


class ProxyStats:
    """Counters of one proxy's traffic (a debugging aid; ``proxy.stats``).

    ``last_frame_sent`` / ``last_frame_received`` are the byte sizes of the latest pipe frames;
    ``shm_bytes_sent`` / ``shm_bytes_received`` count payload bytes that went through shared
    memory instead of the pipe.
    """

    __slots__ = (
        "calls",
        "frames_sent",
        "frames_received",
        "pipe_bytes_sent",
        "pipe_bytes_received",
        "last_frame_sent",
        "last_frame_received",
        "shm_bytes_sent",
        "shm_bytes_received",
        "replies_discarded",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ProxyStats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"


_SYNC_SETTLE = threading.Lock()  # a reply and a timeout may race to settle one waiter


class _SyncWaiter:
    """A one-shot result slot for blocking callers (lighter than concurrent.futures.Future)."""

    __slots__ = ("_lock", "_value", "_error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return not self._lock.locked()

    def set_result(self, value: Any) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value: Any, error: BaseException | None) -> bool:
        """Settle once; False (and nothing changed) if it was already settled."""
        with _SYNC_SETTLE:
            if not self._lock.locked():
                return False
            self._value = value
            self._error = error
            self._lock.release()
            return True

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Pending:
    __slots__ = ("fut", "loop", "thread", "segment", "label")

    def __init__(self, fut, loop, segment, label) -> None:
        self.fut = fut
        self.loop = loop
        self.thread = threading.get_ident()
        self.segment = segment
        self.label = label


def _settle_asyncio(fut: asyncio.Future, result, error) -> None:
    if fut.done() or fut.get_loop().is_closed():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _settle(entry: _Pending, result=None, error=None) -> None:
    fut = entry.fut
    if entry.loop is None:
        if not fut.done():
            try:
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
            except RuntimeError:  # pragma: no cover - settled by another thread meanwhile
                pass
        return
    if threading.get_ident() == entry.thread:
        _settle_asyncio(fut, result, error)
    else:
        try:
            entry.loop.call_soon_threadsafe(_settle_asyncio, fut, result, error)
        except RuntimeError:  # the loop is closed
            pass


_LIVE: "weakref.WeakSet[ProcessProxy]" = weakref.WeakSet()


class _RemoteMember:
    """``proxy.name``: await it for the attribute, or call it for the method."""

    __slots__ = ("_proxy", "_name")

    def __init__(self, proxy: "ProcessProxy", name: str) -> None:
        self._proxy = proxy
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any):
        return self._proxy.call(self._name, *args, **kwargs)

    def __await__(self):
        return self._proxy.get(self._name).__await__()

    def __repr__(self) -> str:
        return f"<remote member {self._name!r} of {self._proxy!r}>"


class ProcessProxy:
    """Calls into an object that lives in a spawned child process; made by :func:`mpify`.

    Every public method of the child's object becomes a coroutine, and awaiting an attribute
    fetches its value::

        import asyncio
        from aiofranka.process import ampify

        class Counter:
            def __init__(self, start):
                self.value = start

            def add(self, n):
                self.value += n
                return self.value

        async def main():
            async with await ampify(Counter, 10) as counter:
                print(await counter.add(5))   # 15
                print(await counter.value)    # 15

        if __name__ == "__main__":
            asyncio.run(main())

    Calls may overlap (``asyncio.gather``); the child runs them one at a time, in the order
    they were sent. Names the proxy defines itself (``call``, ``get``, ``stop``, ``pid``...)
    and names starting with ``_`` are reached with ``await proxy.call(name, ...)`` or
    ``await proxy.get(name)``. Outside the event loop use :meth:`call_sync` / :meth:`get_sync`.

    NumPy arrays in arguments and results travel through shared memory (see the module
    docstring); an array comes back as a fresh copy (read-only arrays stay read-only).

    Cancellation: cancelling an awaiting call does not stop the child's work; its reply is
    discarded when it arrives and the proxy stays usable.

    Worker death: if the child dies, pending and later calls raise
    :class:`~aiofranka.exceptions.WorkerCrashedError`. After :meth:`stop` / :meth:`astop`
    they raise :class:`~aiofranka.exceptions.WorkerStoppedError`.

    A proxy serves one event loop at a time; it moves to another loop once the previous one
    stopped running.
    """

    def __init__(self, process, conn, pool: _Pool, token: str) -> None:
        self._process = process
        self._conn = conn
        self._fd = conn.fileno()
        self._sentinel = process.sentinel
        self._pid: int = process.pid
        self._pool = pool
        self._peer = _Peer()
        self._chan = _Channel(self._fd)
        self._token = token
        self._lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
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
        self._waiter = select.poll()  # blocking callers wait on the pipe and the sentinel
        self._waiter.register(self._fd, select.POLLIN)
        self._waiter.register(self._sentinel, select.POLLIN)
        self._sentinel_poll = select.poll()
        self._sentinel_poll.register(self._sentinel, select.POLLIN)
        self._dying = False
        self._death_loop: asyncio.AbstractEventLoop | None = None
        self.stats = ProxyStats()
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, _abandon, process, conn, pool, self._chan)
        self._finalizer.atexit = False

    # ----------------------------------------------------------------- public surface

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._pid

    @property
    def alive(self) -> bool:
        """True while the child runs and the proxy accepts calls."""
        return self._state == _RUNNING and self._poll_exitcode() is None

    def __getattr__(self, name: str) -> _RemoteMember:
        if name.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__!r} has no attribute {name!r} (reach private names of the "
                f"remote object with proxy.call({name!r}, ...) or proxy.get({name!r}))"
            )
        return _RemoteMember(self, name)

    def __repr__(self) -> str:
        return f"<ProcessProxy pid={self._pid} {self._state}>"

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``obj.name(*args, **kwargs)`` in the child and return its result."""
        return await self._request(_CALL, (name, args, kwargs), name)

    async def get(self, name: str, /) -> Any:
        """Return the value of attribute ``name`` of the child's object."""
        return await self._request(_GETATTR, name, name)

    def call_sync(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking :meth:`call` for code outside the event loop (not inside a coroutine)."""
        return self._request_sync(_CALL, (name, args, kwargs), name)

    def call_sync_timeout(self, timeout: float, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call_sync` that gives up after ``timeout`` seconds.

        Raises :class:`~aiofranka.exceptions.CallTimeoutError` then; the call may still run
        in the child, and its late reply is discarded.
        """
        if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        return self._request_sync(_CALL, (name, args, kwargs), name, timeout)

    def get_sync(self, name: str, /) -> Any:
        """Blocking :meth:`get` for code outside the event loop."""
        return self._request_sync(_GETATTR, name, name)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the child: ask it to exit, wait up to ``timeout`` s, then SIGKILL it.

        Pending calls fail with :class:`~aiofranka.exceptions.WorkerStoppedError`, as do later
        ones. Idempotent. It blocks while the child exits (tens of ms): inside a coroutine use
        :meth:`astop`.
        """
        if not self._begin_stop():
            return
        self._detach()
        self._send_stop()
        process = self._process
        try:
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join(2.0)
        except (ValueError, AssertionError):  # pragma: no cover - already closed
            pass
        self._finish_stop()

    async def astop(self, timeout: float | None = 5.0) -> None:
        """:meth:`stop` without blocking the event loop (the join happens off the loop)."""
        loop = asyncio.get_running_loop()
        if not self._begin_stop():
            while not self._stopped.is_set():
                await asyncio.sleep(0.005)
            return
        self._detach()
        self._send_stop()
        if not await self._wait_exit(loop, timeout):
            self._kill()
            await self._wait_exit(loop, 2.0)
        for _ in range(200):  # the sentinel fires a moment before the child is reapable
            if self._poll_exitcode() is not None:
                break
            await asyncio.sleep(0.001)
        self._finish_stop()

    def __enter__(self) -> "ProcessProxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "ProcessProxy":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.astop()

    # ----------------------------------------------------------------- requests

    def _check_usable(self) -> None:
        state = self._state
        if state == _RUNNING and not self._dying:
            return
        if state == _RUNNING:
            raise WorkerCrashedError(f"the mpify child process (pid {self._pid}) is exiting")
        if state == _CRASHED:
            raise WorkerCrashedError(self._dead_reason)
        if state in (_STOPPING, _STOPPED):
            raise WorkerStoppedError(f"the mpify child process (pid {self._pid}) was stopped")
        raise OffloadError("the mpify child process is not ready yet")

    def _submit(self, kind: int, payload: Any, fut, loop, label: str) -> None:
        self._check_usable()
        data, segment = _encode(payload, self._pool)
        with self._lock:
            if self._state != _RUNNING or self._dying:
                if segment is not None:
                    self._pool.release(segment[0])
                self._check_usable()
            rid = next(self._ids)
            self._pending[rid] = _Pending(fut, loop, segment[0] if segment else None, label)
            try:
                self._send_locked(kind, rid, data, segment)
            except OSError:
                self._pending.pop(rid, None)
                if segment is not None:
                    self._pool.release(segment[0])
                crashed = True
            else:
                crashed = False
                self.stats.calls += 1
                self.stats.shm_bytes_sent += _segment_bytes(segment)
        if crashed:  # the readers report the death of the child with its exit code
            self._dying = True
            if self._poll_exitcode() is not None:
                raise WorkerCrashedError(_death_reason(self._pid, self._exitcode))
            raise WorkerCrashedError(f"the mpify child process (pid {self._pid}) is exiting")

    def _send_locked(self, kind: int, rid: int, data, segment=None) -> None:
        releases = self._releases
        if releases:
            self._releases = []
        frame = _frame(kind, rid, data, segment, releases or None, self._pool.take_forgotten())
        self._chan.send(frame)
        self.stats.frames_sent += 1
        self.stats.pipe_bytes_sent += len(frame)
        self.stats.last_frame_sent = len(frame)

    async def _request(self, kind: int, payload: Any, label: str) -> Any:
        loop = self._attach()
        fut = loop.create_future()
        self._submit(kind, payload, fut, loop, label)
        if self._live_timer is None:
            self._live_timer = loop.call_later(0.5, self._check_alive)
        return await fut

    def _request_sync(self, kind: int, payload: Any, label: str, timeout: float | None = None) -> Any:
        self._check_usable()
        if _running_loop() is not None:
            raise RuntimeError(
                f"{label!r}: call_sync()/get_sync() would block the running event loop; "
                "use await proxy.call(...) / await proxy.get(...) there"
            )
        fut = _SyncWaiter()
        self._submit(kind, payload, fut, None, label)
        deadline = None if timeout is None else time.monotonic() + timeout
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
        self._check_usable()
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

    def _attach_starting(self, loop) -> None:
        """Register the loop readers while the proxy is still starting (no usability check)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        loop.add_reader(self._fd, self._on_readable)
        loop.add_reader(self._sentinel, self._on_sentinel)
        self._live_timer = loop.call_later(0.5, self._check_alive)

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
        stats = self.stats
        stats.frames_received += 1
        stats.pipe_bytes_received += len(frame)
        stats.last_frame_received = len(frame)
        kind, rid, segment, _releases, forgets, data = _parse(frame)
        if forgets:
            self._peer.forget(forgets)
        with self._lock:
            entry = self._pending.pop(rid, None)
            if entry is not None and entry.segment is not None:
                self._pool.release(entry.segment)
            if kind == _READY and self._state == _STARTING:
                self._state = _RUNNING
        alive = entry is not None and not entry.fut.done()
        result = error = None
        if alive:
            stats.shm_bytes_received += _segment_bytes(segment)
            try:
                if kind == _RESULT:
                    result = _decode(data, segment, self._peer)
                elif kind == _READY:
                    result = pickle.loads(data)
                else:  # _ERROR, _INIT_ERROR
                    error = _rebuild_exception(pickle.loads(data))
            except Exception as exc:  # noqa: BLE001 - e.g. a class the parent cannot import
                error = OffloadError(f"the reply to {entry.label!r} could not be unpickled: {exc!r}")
                error.__cause__ = exc
        elif kind in (_RESULT, _ERROR):
            stats.replies_discarded += 1
        if alive:
            _settle(entry, result, error)  # first, so the woken task runs before the flush
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
                self._send_locked(_CONTROL, 0, b"")
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
            _unlink_prefix(f"afk{self._token}c")

    def _mark_dead(self, reason: str) -> None:
        with self._lock:
            if self._state not in (_STARTING, _RUNNING):
                return
            self._state = _CRASHED
            self._dead_reason = reason
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            _settle(entry, error=WorkerCrashedError(reason))

    def _poll_exitcode(self) -> int | None:
        if self._exitcode is None:
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
            self._state = _STOPPING
            pending = list(self._pending.values())
            self._pending.clear()
        for entry in pending:
            _settle(entry, error=WorkerStoppedError(f"the mpify child process (pid {self._pid}) was stopped"))
        self._finalizer.detach()
        _LIVE.discard(self)
        return True

    def _send_stop(self) -> None:
        with self._lock:
            try:
                self._chan.send(_frame(_STOP, 0, b""))
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
            try:
                self._conn.close()
            except OSError:
                pass
            self._chan.close()
        finally:
            if got:
                self._recv_lock.release()
        self._pool.unlink_all()
        self._peer.close_all()
        _unlink_prefix(f"afk{self._token}c")
        with self._lock:
            self._state = _STOPPED
        process = self._process
        try:
            if self._poll_exitcode() is not None:
                process.join(0)
                process.close()
        except (ValueError, AssertionError):  # pragma: no cover
            pass
        self._stopped.set()


def _abandon(process, conn, pool: _Pool, reader: _Channel) -> None:
    """Finaliser of a proxy dropped without stop(): let the child go, never block."""
    try:
        reader.send(_frame(_STOP, 0, b""))
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
    for proxy in list(_LIVE):
        try:
            proxy.stop(timeout=1.0)
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------- start-up


def _validate(start_timeout: float, arena_bytes: int) -> None:
    if not (isinstance(start_timeout, (int, float)) and start_timeout > 0):
        raise ValueError(f"start_timeout must be a positive number of seconds, got {start_timeout!r}")
    if not (isinstance(arena_bytes, int) and arena_bytes >= 0):
        raise ValueError(f"arena_bytes must be a non-negative int, got {arena_bytes!r}")


def _launch(factory, args, kwargs, arena_bytes: int, site) -> ProcessProxy:
    """Start the child (runs in a helper thread at SCHED_OTHER)."""
    _check_main_guard(site)
    blob = _cloudpickle().dumps((factory, args, kwargs), protocol=5)
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    token = secrets.token_hex(4)
    process = ctx.Process(
        target=_child_main,
        args=(child_conn, blob, os.getpid(), token, arena_bytes),
        name=f"aiofranka-mpify-{token}",
    )
    try:
        process.start()
    except BaseException:
        parent_conn.close()
        raise
    finally:
        child_conn.close()
    try:
        pool = _Pool(f"afk{token}p", arena_bytes if _posixshmem else 0)
    except BaseException:
        process.kill()
        process.join()
        parent_conn.close()
        raise
    return ProcessProxy(process, parent_conn, pool, token)


class _Starter:
    """Runs :func:`_launch` in a demoted thread; disposes of the result if nobody wants it."""

    def __init__(self, *launch_args: Any) -> None:
        self._args = launch_args
        self._lock = threading.Lock()
        self._abandoned = False
        self.proxy: ProcessProxy | None = None
        self.error: BaseException | None = None
        self.on_done: Callable[[], None] | None = None
        self.thread = threading.Thread(target=self._run, name="aiofranka-mpify-start", daemon=True)

    def _run(self) -> None:
        _demote_current_thread()
        proxy = None
        try:
            proxy = _launch(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        with self._lock:
            abandoned = self._abandoned
            self.proxy = None if abandoned else proxy
        if abandoned and proxy is not None:
            proxy.stop(timeout=0)
        if self.on_done is not None:
            self.on_done()

    def abandon(self) -> ProcessProxy | None:
        """Give up on the start; returns the proxy if it already exists (caller stops it)."""
        with self._lock:
            self._abandoned = True
            proxy, self.proxy = self.proxy, None
        return proxy


def _stop_in_background(proxy: ProcessProxy) -> None:
    proxy._detach()  # on the loop's thread: removes the readers at once
    proxy._kill()
    threading.Thread(target=proxy.stop, args=(1.0,), name="aiofranka-mpify-stop", daemon=True).start()


def mpify(
    factory: Callable[..., Any],
    /,
    *args: Any,
    start_timeout: float = 60.0,
    arena_bytes: int = DEFAULT_ARENA_BYTES,
    **kwargs: Any,
) -> ProcessProxy:
    """Build ``factory(*args, **kwargs)`` in a spawned child process; return its proxy.

    Blocks until the child is ready (0.4-2 s), so call it before the robot loop starts;
    inside a running event loop it raises ``RuntimeError`` (use :func:`ampify` there).
    ``factory`` is serialised with cloudpickle, so a lambda, a closure or a class defined in
    the main script works. The main script must keep its top-level code under
    ``if __name__ == "__main__":`` (a spawned child re-imports it); an unguarded call raises
    ``RuntimeError`` before anything is spawned.

    An exception raised by ``factory`` is raised here as itself (``RemoteError`` if it cannot
    be pickled) with the child's traceback as ``__cause__``. A child that does not answer
    within ``start_timeout`` seconds is killed and ``OffloadError`` raised. ``arena_bytes``
    is the size of the shared-memory segment each side creates up front (more are added on
    demand). The keywords ``start_timeout`` and ``arena_bytes`` are not passed to the factory;
    wrap it with ``functools.partial`` if it needs them.

    Example::

        from aiofranka.process import mpify

        def make_policy():
            return {"gain": 2.0}       # any object; its methods become coroutines

        if __name__ == "__main__":
            with mpify(make_policy) as proxy:
                print(proxy.call_sync("get", "gain"))   # 2.0
    """
    _check_not_bootstrapping()
    _validate(start_timeout, arena_bytes)
    if _running_loop() is not None:
        raise RuntimeError(
            "mpify() blocks while the child process starts (0.4-2 s); inside a running "
            "event loop use `proxy = await ampify(...)`"
        )
    deadline = time.monotonic() + start_timeout
    starter = _Starter(factory, args, kwargs, arena_bytes, _main_call_site())
    starter.thread.start()
    try:
        starter.thread.join(max(0.0, deadline - time.monotonic()))
        if starter.thread.is_alive():
            raise OffloadError(f"the mpify child process could not be started within {start_timeout} s")
    except BaseException:
        proxy = starter.abandon()  # a start still under way stops its own proxy
        if proxy is not None:
            proxy.stop(timeout=0)
        raise
    if starter.error is not None:
        raise starter.error
    proxy = starter.proxy
    assert proxy is not None
    ready = _SyncWaiter()
    proxy._pending[0] = _Pending(ready, None, None, "start")
    try:
        if not proxy._wait_sync(ready, deadline):
            raise OffloadError(f"the mpify child process did not become ready within {start_timeout} s")
        ready.result()
    except BaseException:
        proxy.stop(timeout=1.0)
        raise
    return proxy


async def ampify(
    factory: Callable[..., Any],
    /,
    *args: Any,
    start_timeout: float = 60.0,
    arena_bytes: int = DEFAULT_ARENA_BYTES,
    **kwargs: Any,
) -> ProcessProxy:
    """:func:`mpify` for coroutines: the event loop keeps running while the child starts.

    The process is started from a helper thread and the handshake is awaited through
    ``loop.add_reader``; safe to call while the robot loop runs. Cancelling the await kills
    the half-started child.

    Example::

        import asyncio
        from aiofranka.process import ampify

        async def main():
            proxy = await ampify(dict, gain=2.0)      # a dict built in the child
            print(await proxy.call("get", "gain"))    # 2.0: dict.get runs in the child
            await proxy.astop()

        if __name__ == "__main__":
            asyncio.run(main())
    """
    _check_not_bootstrapping()
    _validate(start_timeout, arena_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + start_timeout
    launched = loop.create_future()

    def on_done() -> None:
        try:
            loop.call_soon_threadsafe(lambda: launched.done() or launched.set_result(None))
        except RuntimeError:  # the loop is gone
            pass

    starter = _Starter(factory, args, kwargs, arena_bytes, _main_call_site())
    starter.on_done = on_done
    starter.thread.start()
    try:
        await asyncio.wait_for(asyncio.shield(launched), max(0.0, deadline - loop.time()))
    except BaseException as exc:
        proxy = starter.abandon()
        if proxy is not None:
            _stop_in_background(proxy)
        if isinstance(exc, asyncio.TimeoutError):
            raise OffloadError(
                f"the mpify child process could not be started within {start_timeout} s"
            ) from None
        raise
    if starter.error is not None:
        raise starter.error
    proxy = starter.proxy
    assert proxy is not None
    ready = loop.create_future()
    proxy._pending[0] = _Pending(ready, loop, None, "start")
    try:
        proxy._attach_starting(loop)
        await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
    except asyncio.CancelledError:
        _stop_in_background(proxy)
        raise
    except asyncio.TimeoutError:
        await proxy.astop(timeout=0)
        raise OffloadError(f"the mpify child process did not become ready within {start_timeout} s") from None
    except BaseException:
        await proxy.astop(timeout=1.0)
        raise
    return proxy
