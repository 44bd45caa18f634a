"""Run an object in a spawned child process: :func:`mpify` and :func:`ampify` (a coroutine).

Both build ``factory(*args, **kwargs)`` in a child started with ``spawn`` and return a
:class:`~aiofranka.ProcessProxy` whose methods are coroutines. A helper thread at normal
scheduling spawns the child and waits for it, so neither blocks an event loop: inside one,
:func:`mpify` returns at once and the first awaited call waits for the child. Guide, design
and failure modes: docs/async.md.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import secrets
from typing import Any, Callable

from . import _proxy, _shm
from ._child import child_main
from ._mainguard import check_main_guard, check_not_bootstrapping, main_call_site
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


def _launch(factory, args, kwargs, arena_bytes: int, site) -> tuple:
    """Spawn the child; ``(process, conn, pool, token)`` (runs in the start thread, at SCHED_OTHER)."""
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
    return process, parent_conn, pool, token


def mpify(
    factory: Callable[..., Any],
    /,
    *args: Any,
    start_timeout: float = 60.0,
    arena_bytes: int = DEFAULT_ARENA_BYTES,
    **kwargs: Any,
) -> ProcessProxy:
    """Build ``factory(*args, **kwargs)`` in a spawned child process; return its proxy.

    Inside a running event loop it returns at once: the child starts in the background (0.4-2 s)
    and the first awaited call, or ``await proxy.ready()``, waits for it, so it is safe while the
    robot loop runs. Outside an event loop it blocks until the child is ready. ``factory`` and
    its arguments are serialised in the background: do not mutate the arguments meanwhile.
    ``factory`` is serialised with cloudpickle, so a lambda, a closure or a class defined in
    the main script works. The main script must keep its top-level code under
    ``if __name__ == "__main__":`` (a spawned child re-imports it); an unguarded call raises
    ``RuntimeError`` before anything is spawned.

    An exception raised by ``factory`` is raised as itself (``RemoteError`` if it cannot be
    pickled) with the child's traceback as ``__cause__``: here outside an event loop, by
    ``proxy.ready()`` and every call inside one. A child that does not answer within
    ``start_timeout`` seconds is killed and ``OffloadError`` raised the same way. ``arena_bytes``
    is the size of the shared-memory segment each side creates up front (more are added on
    demand). The keywords ``start_timeout`` and ``arena_bytes`` are not passed to the factory;
    wrap it with ``functools.partial`` if it needs them.

    Example::

        import asyncio
        from aiofranka import mpify

        def make_policy(gain):
            return {"gain": gain}      # any object; its methods become coroutines

        async def main():
            policy = mpify(make_policy, 2.0)          # returns at once
            print(await policy.call("get", "gain"))   # 2.0 (dict.get), once the child is ready
            await policy.astop()

        if __name__ == "__main__":
            asyncio.run(main())
            with mpify(make_policy, 3.0) as policy:   # outside a loop: blocks until ready
                print(policy.call_sync("get", "gain"))   # 3.0
    """
    check_not_bootstrapping()
    _validate(start_timeout, arena_bytes)
    launch = functools.partial(_launch, factory, args, kwargs, arena_bytes, main_call_site())
    proxy = _proxy.start(launch, start_timeout)
    if running_loop() is not None:
        return proxy  # never block a loop: the first awaited call waits for the child
    try:
        _proxy.wait_started(proxy, start_timeout + 10.0)  # the start thread enforces start_timeout
    except BaseException:
        proxy.stop(timeout=0)
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
    """``mpify(...)`` then ``await proxy.ready()``: returns the proxy once the child is ready.

    The event loop keeps running while the child starts; the factory's error is raised here.
    Cancelling the await kills the half-started child.

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
    proxy = mpify(factory, *args, start_timeout=start_timeout, arena_bytes=arena_bytes, **kwargs)
    try:
        await proxy.ready()
    except BaseException:
        proxy.stop(timeout=0)  # on the loop: returns at once, the child is reaped off it
        raise
    return proxy
