"""The calls in flight between a proxy and its child: what each caller waits on, and how
a reply (or the child's death, or a stop) settles it from whichever thread reads the pipe."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["Pending", "SyncWaiter", "settle"]

_SYNC_SETTLE = threading.Lock()  # a reply and a timeout may race to settle one waiter


class SyncWaiter:
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


class Pending:
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


def settle(entry: Pending, result=None, error=None) -> None:
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
