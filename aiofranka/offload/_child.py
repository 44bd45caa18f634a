"""The child process's side of mpify: build the object, then serve requests one at a time.

The child ignores SIGINT, runs at normal scheduling, and exits when its parent does (EOF on the
pipe, or a watchdog that polls ``os.getppid()``). See docs/async.md (how mpify works).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import signal
import threading
import time
import types
from typing import Any

from .._os import demote_to_normal
from ._shm import AVAILABLE, Peer, Pool, unlink_prefix
from ._wire import (
    CALL,
    ERROR,
    GETATTR,
    INIT_ERROR,
    READY,
    RESULT,
    STOP,
    Channel,
    decode,
    encode,
    exception_payload,
    pack_frame,
    unpack_frame,
)

__all__ = ["Child", "child_main"]

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


class Child:
    """The child's side: builds the object, then serves requests one at a time."""

    def __init__(self, conn, parent_pid: int, token: str, arena_bytes: int) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.token = token
        self.arena_bytes = arena_bytes
        self.pool: Pool | None = None
        self.peer = Peer()
        self.obj: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.parent_dead = False
        self.chan: Channel | None = None
        self._cleaned = False
        self._cleanup_lock = threading.Lock()

    def run(self, blob: bytes) -> None:
        threading.Thread(target=self._watch_parent, name="aiofranka-mpify-watchdog", daemon=True).start()
        self.chan = Channel(self.conn.fileno())
        try:
            try:
                self.pool = Pool(f"afk{self.token}c", self.arena_bytes) if AVAILABLE else None
                factory, args, kwargs = pickle.loads(blob)
                self.obj = factory(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                self._send(INIT_ERROR, 0, pickle.dumps(exception_payload(exc), 5))
                return
            self._send(READY, 0, pickle.dumps(os.getpid(), 5))
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
            unlink_prefix(f"afk{self.token}p")  # the parent cannot clean its own any more
        if self.chan is not None:
            self.chan.close()
        try:
            self.conn.close()
        except OSError:
            pass

    def _send(self, kind: int, rid: int, data, segment=None) -> None:
        forgets = self.pool.take_forgotten() if self.pool is not None else None
        self.chan.send(pack_frame(kind, rid, data, segment, None, forgets))

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
                kind, rid, segment, releases, forgets, data = unpack_frame(frame)
                if releases and self.pool is not None:
                    for name in releases:
                        self.pool.release(name)
                if forgets:
                    self.peer.forget(forgets)
                if kind == CALL or kind == GETATTR:
                    self._dispatch(kind, rid, segment, data)
                elif kind == STOP:
                    return
        finally:
            reader.close()

    def _dispatch(self, kind: int, rid: int, segment, data) -> None:
        try:
            payload = decode(data, segment, self.peer)
            if kind == CALL:
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
            self._send(ERROR, rid, pickle.dumps(exception_payload(exc), 5))
            return
        try:
            out, seg = encode(result, self.pool)
        except Exception as exc:  # noqa: BLE001
            error = TypeError(f"the result could not be pickled: {exc!r}")
            self._send(ERROR, rid, pickle.dumps(exception_payload(error), 5))
            return
        self._send(RESULT, rid, out, seg)


def child_main(conn, blob: bytes, parent_pid: int, token: str, arena_bytes: int) -> None:
    """Entry point of the spawned child."""
    demote_to_normal()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (OSError, ValueError):  # pragma: no cover
        pass
    Child(conn, parent_pid, token, arena_bytes).run(blob)
