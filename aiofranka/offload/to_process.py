"""Run an object in a spawned child process: :func:`mpify` (blocking) and :func:`ampify` (a coroutine).

Both build ``factory(*args, **kwargs)`` in a child started with ``spawn`` and return a
:class:`~aiofranka.ProcessProxy` whose methods are coroutines; the process is
started from a helper thread at normal scheduling, so :func:`ampify` never blocks the event
loop. Guide, design and failure modes: docs/async.md.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import threading
import time
from typing import Any, Callable

from .._os import demote_to_normal
from ..exceptions import OffloadError
from . import _proxy, _shm
from ._child import child_main
from ._mainguard import check_main_guard, check_not_bootstrapping, main_call_site
from ._pending import SyncWaiter
from ._proxy import ProcessProxy, running_loop
from ._wire import import_cloudpickle

__all__ = ["DEFAULT_ARENA_BYTES", "ampify", "mpify"]

#: Size of the shared-memory segment each side creates at start (per direction).
DEFAULT_ARENA_BYTES = 1 << 20


def _validate(start_timeout: float, arena_bytes: int) -> None:
    if not (isinstance(start_timeout, (int, float)) and start_timeout > 0):
        raise ValueError(f"start_timeout must be a positive number of seconds, got {start_timeout!r}")
    if not (isinstance(arena_bytes, int) and arena_bytes >= 0):
        raise ValueError(f"arena_bytes must be a non-negative int, got {arena_bytes!r}")


def _launch(factory, args, kwargs, arena_bytes: int, site) -> ProcessProxy:
    """Start the child (runs in a helper thread at SCHED_OTHER)."""
    check_main_guard(site)
    blob = import_cloudpickle().dumps((factory, args, kwargs), protocol=5)
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    token = secrets.token_hex(4)
    process = ctx.Process(
        target=child_main,
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
        pool = _shm.Pool(f"afk{token}p", arena_bytes if _shm.AVAILABLE else 0)
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
        demote_to_normal()
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
    _proxy.abort(proxy)  # on the loop's thread: removes the readers at once
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

        from aiofranka import mpify

        def make_policy():
            return {"gain": 2.0}       # any object; its methods become coroutines

        if __name__ == "__main__":
            with mpify(make_policy) as proxy:
                print(proxy.call_sync("get", "gain"))   # 2.0
    """
    check_not_bootstrapping()
    _validate(start_timeout, arena_bytes)
    if running_loop() is not None:
        raise RuntimeError(
            "mpify() blocks while the child process starts (0.4-2 s); inside a running "
            "event loop use `proxy = await ampify(...)`"
        )
    deadline = time.monotonic() + start_timeout
    starter = _Starter(factory, args, kwargs, arena_bytes, main_call_site())
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
    ready = SyncWaiter()
    _proxy.expect_ready(proxy, ready, None)
    try:
        if not _proxy.wait_ready_sync(proxy, ready, deadline):
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
        from aiofranka import ampify

        async def main():
            proxy = await ampify(dict, gain=2.0)      # a dict built in the child
            print(await proxy.call("get", "gain"))    # 2.0: dict.get runs in the child
            await proxy.astop()

        if __name__ == "__main__":
            asyncio.run(main())
    """
    check_not_bootstrapping()
    _validate(start_timeout, arena_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + start_timeout
    launched = loop.create_future()

    def on_done() -> None:
        try:
            loop.call_soon_threadsafe(lambda: launched.done() or launched.set_result(None))
        except RuntimeError:  # the loop is gone
            pass

    starter = _Starter(factory, args, kwargs, arena_bytes, main_call_site())
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
    _proxy.expect_ready(proxy, ready, loop)
    try:
        _proxy.attach_starting(proxy, loop)
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
