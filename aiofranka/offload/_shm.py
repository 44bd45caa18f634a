"""POSIX shared-memory segments that carry large payloads between a proxy and its child.

Each side sends through a :class:`Pool` of segments it owns (mode 0600, pages reserved up
front) and maps the peer's segments through :class:`Peer`, without the resource tracker.
Every segment's name ends with its creator's pid, so the first segment a process creates
first sweeps away those of dead processes (:func:`sweep_stale`).
How segments are handed over and released: docs/async.md (how mpify works).
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
import threading
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

try:  # POSIX shared memory; absent on Windows, where payloads simply stay in the pipe
    import _posixshmem
except ImportError:  # pragma: no cover - not on Linux
    _posixshmem = None

__all__ = ["AVAILABLE", "Mapped", "Owned", "Peer", "Pool", "sweep_stale", "unlink_prefix"]

#: Whether this platform has POSIX shared memory (else payloads stay in the pipe).
AVAILABLE = _posixshmem is not None

_MIN_SEGMENT = 64 * 1024
_MAX_IDLE_SEGMENTS = 4
_SHM_DIR = "/dev/shm"
#: Our segments: "afk", a tag of letters and digits, "-", the creator's pid.
_OURS = re.compile(r"afk[0-9a-z]+-([0-9]+)")
_sweep_lock = threading.Lock()
_swept_in = 0  # the pid that swept (a forked child sweeps again)


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


def unlink_prefix(prefix: str) -> None:
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale() -> list[str]:
    """Unlink the segments dead aiofranka processes left; return their names.

    Only names of our form (:data:`_OURS`), only files of the current user,
    only when the pid in the name is not a running process. A process whose
    whole group was SIGKILLed (its resource tracker with it) leaves its
    segments in /dev/shm for good otherwise. A pid reused since keeps its
    segments until that process ends too; a live process in another pid
    namespace sharing this /dev/shm would look dead (docs/async.md).
    """
    if _posixshmem is None:
        return []
    try:
        names = os.listdir(_SHM_DIR)
    except OSError:
        return []
    uid, me = os.getuid(), os.getpid()
    removed = []
    for name in names:
        match = _OURS.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == me or _alive(pid):
            continue
        try:
            if os.stat(os.path.join(_SHM_DIR, name), follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        _unlink_name(name, tracked=False)  # never registered with this process's tracker
        removed.append(name)
    return removed


def _sweep_once() -> None:
    global _swept_in
    with _sweep_lock:
        if _swept_in == os.getpid():
            return
        _swept_in = os.getpid()
    sweep_stale()


class Owned:
    """A segment this side created (a ``SharedMemory``), reused for many messages.

    It is named ``f"{name}-{pid}"`` (this process's pid): ``name`` must be
    "afk" and letters or digits. The first one a process creates first runs
    :func:`sweep_stale`.
    """

    __slots__ = ("name", "size", "buf", "_shm")

    def __init__(self, name: str, size: int) -> None:
        name = f"{name}-{os.getpid()}"
        if _OURS.fullmatch(name) is None:
            raise ValueError(f"name must be 'afk' and letters or digits, got {name!r}")
        _sweep_once()
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


class Mapped:
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


class Pool:
    """The segments one side sends with: idle ones are reused, busy ones await release."""

    def __init__(self, prefix: str, arena_bytes: int) -> None:
        self.prefix = prefix
        self._counter = itertools.count()
        self._idle: list[Owned] = []
        self._busy: dict[str, Owned] = {}
        self._forgotten: list[str] = []
        self._lock = threading.Lock()
        self.created = 0
        self.closed = False
        if arena_bytes > 0 and _posixshmem is not None:
            self._idle.append(self._new(arena_bytes))

    def _new(self, size: int) -> Owned:
        for _ in range(8):
            name = f"{self.prefix}{next(self._counter)}"
            try:
                seg = Owned(name, size)
            except FileExistsError:
                continue
            self.created += 1
            return seg
        raise FileExistsError(f"could not create a shared-memory segment named {self.prefix}*")

    def acquire(self, nbytes: int) -> Owned:
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


class Peer:
    """Mappings of the other side's segments, by name."""

    def __init__(self) -> None:
        self._maps: dict[str, Mapped] = {}

    def view(self, name: str) -> memoryview:
        mapped = self._maps.get(name)
        if mapped is None:
            mapped = self._maps[name] = Mapped(name)
        return mapped.buf

    def forget(self, names) -> None:
        for name in names:
            mapped = self._maps.pop(name, None)
            if mapped is not None:
                mapped.close()

    def close_all(self) -> None:
        self.forget(list(self._maps))

