"""Calling into a running event loop from another thread and waiting for the answer."""

from __future__ import annotations

import asyncio
import concurrent.futures

__all__ = ["call_on_loop"]


def call_on_loop(loop: asyncio.AbstractEventLoop, fn, *args, timeout: float | None = None):
    """Run ``fn(*args)`` on ``loop`` (awaiting what it returns) from another thread; return the result."""
    if asyncio._get_running_loop() is loop:
        raise RuntimeError("this call blocks until the controller's event loop answers, and it was made "
                           "from that loop's own thread; call it from another thread")

    async def call():
        result = fn(*args)
        if asyncio.isfuture(result) or asyncio.iscoroutine(result) or hasattr(result, "__await__"):
            result = await result
        return result

    try:
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)
    except concurrent.futures.TimeoutError as exc:
        raise TimeoutError(f"the controller's event loop did not answer within {timeout} s") from exc
