"""Blocking work off the event loop, in threads: :func:`asyncify` and :func:`async_input`.

``await asyncify(fn)(...)`` runs ``fn`` in a small worker pool owned by aiofranka;
:func:`async_input` is ``input()`` on a daemon thread. Worker threads start at normal
scheduling (never above the control loop) and follow torch's thread count. Cancellation,
the GIL and torch: docs/async.md.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import inspect
import itertools
import sys
import threading
from typing import Any, Callable, Concatenate, Coroutine, Generic, ParamSpec, TypeVar, overload

from .._os import demote_to_normal

__all__ = [
    "ASYNCIFY_WORKERS",
    "AsyncCallable",
    "async_input",
    "asyncify",
    "set_asyncify_workers",
    "stop_asyncify_pool",
]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")

#: Default number of workers in the shared :func:`asyncify` pool.
ASYNCIFY_WORKERS = 4


# --------------------------------------------------------------------------
# AsyncCallable: the object asyncify() and CudaInferenceThread.wrap() return
# --------------------------------------------------------------------------

Dispatch = Callable[[Callable[..., Any], tuple, dict], Coroutine[Any, Any, Any]]


class AsyncCallable(Generic[P, R]):
    """An async callable that runs a synchronous function elsewhere.

    ``await obj(*args, **kwargs)`` runs the wrapped function off the event
    loop and returns its result; ``obj.sync(*args, **kwargs)`` calls the
    original directly in the calling thread.  It carries the wrapped
    function's metadata (``functools.wraps``), so ``inspect.signature`` shows
    the original signature.

    It is a descriptor: used on a class, ``instance.method`` is an
    :class:`AsyncCallable` bound to that instance, with ``.sync`` the bound
    method; ``Class.method`` is the unbound wrapper (``Class.method.sync``
    takes ``self`` explicitly).
    """

    sync: Callable[P, R]

    def __init__(self, fn: Callable[P, R], dispatch: Dispatch) -> None:
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.sync = fn
        self._dispatch = dispatch

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._dispatch(self.sync, args, kwargs)

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> "AsyncCallable[P, R]": ...

    @overload
    def __get__(
        self: "AsyncCallable[Concatenate[Any, P2], R2]", instance: object, owner: type | None = None
    ) -> "AsyncCallable[P2, R2]": ...

    def __get__(self, instance: Any, owner: type | None = None) -> "AsyncCallable[..., Any]":
        fn = self.sync
        if instance is None and inspect.isfunction(fn):
            return self
        get = getattr(type(fn), "__get__", None)
        if get is None:  # builtins, partials: not descriptors, never bound
            return self
        return AsyncCallable(get(fn, instance, owner), self._dispatch)

    def __repr__(self) -> str:
        return f"<AsyncCallable {getattr(self, '__qualname__', self.sync)!r}>"


def _check_callable(fn: Any, who: str) -> None:
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{who}: {fn!r} is already a coroutine function; await it directly")
    if not callable(fn) and not isinstance(fn, (classmethod, staticmethod)):
        raise TypeError(f"{who}: fn must be callable, got {type(fn).__name__}")


# --------------------------------------------------------------------------
# asyncify
# --------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_workers = ASYNCIFY_WORKERS
_worker_numbers = itertools.count()


_torch_threads = threading.local()


def _follow_torch_threads(cap: int | None = None, exact: int | None = None) -> None:
    """Apply ``torch.get_num_threads()`` to the calling thread, if it changed (at most ``cap``; ``exact``: that count).

    ``torch.set_num_threads`` reaches OpenMP only for the thread that calls it;
    other threads keep OpenMP's default team (one thread per CPU): after
    ``torch.set_num_threads(1)``, a forward pass in a fresh thread kept 1.7 to
    2.0 CPUs busy here instead of 1.0 (``benchmarks/torch_threads.py``). No-op
    unless torch is imported; about a microsecond when nothing changed.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        current = torch.get_num_threads()
        count = current if exact is None else exact
        if cap is not None and count > cap:
            count = cap
        # torch's count is per process: set it again if someone else changed it since
        if getattr(_torch_threads, "count", None) != count or current != count:
            torch.set_num_threads(count)
            _torch_threads.count = count
    except Exception:  # noqa: BLE001 - a partly imported or stubbed torch: leave it be
        pass


def _asyncify_initializer() -> None:
    threading.current_thread().name = f"aiofranka-asyncify-{next(_worker_numbers)}"
    demote_to_normal()


def _shared_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is not None:
        return pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=_pool_workers,
                thread_name_prefix="aiofranka-asyncify",
                initializer=_asyncify_initializer,
            )
        return _pool


def set_asyncify_workers(max_workers: int) -> None:
    """Size of the shared :func:`asyncify` pool (default :data:`ASYNCIFY_WORKERS`).

    Takes effect for the next pool: the current one, if any, is shut down
    without waiting (its running calls finish) and a new one is created on
    next use.
    """
    global _pool, _pool_workers
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    with _pool_lock:
        _pool_workers = max_workers
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def stop_asyncify_pool(wait: bool = True) -> None:
    """Stop the shared :func:`asyncify` pool (its threads exit); it is created again on next use.

    With ``wait=True`` this blocks until the running calls return: do not
    call it from a running event loop while calls may be long.  Queued calls
    that have not started are cancelled.
    """
    global _pool
    with _pool_lock:
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=wait, cancel_futures=True)


def _stop_iteration_error(exc: StopIteration) -> RuntimeError:
    err = RuntimeError("the function raised StopIteration, which cannot be raised into a Future")
    err.__cause__ = exc
    return err


def _invoke(ctx: contextvars.Context, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    _follow_torch_threads()
    try:
        return ctx.run(fn, *args, **kwargs)
    except StopIteration as exc:  # asyncio refuses it (the await would hang): convert
        raise _stop_iteration_error(exc) from exc


async def _run_in_pool(
    executor: concurrent.futures.Executor | None,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
) -> Any:
    pool = executor if executor is not None else _shared_pool()
    cfuture = pool.submit(_invoke, contextvars.copy_context(), fn, args, kwargs)
    # wrap_future hands the result over with call_soon_threadsafe; cancelling
    # the await cancels the concurrent future (which only prevents a call that
    # has not started yet) and returns at once.
    return await asyncio.wrap_future(cfuture)


@overload
def asyncify(
    fn: Callable[P, R], /, *, executor: concurrent.futures.Executor | None = None
) -> AsyncCallable[P, R]: ...


@overload
def asyncify(
    fn: None = None, /, *, executor: concurrent.futures.Executor | None = None
) -> Callable[[Callable[P, R]], AsyncCallable[P, R]]: ...


def asyncify(fn=None, /, *, executor=None):
    """Make a blocking function awaitable: ``await f(...)`` runs it in a worker thread.

    Use as ``asyncify(fn)``, ``@asyncify`` or ``@asyncify(executor=pool)``.
    By default calls run in aiofranka's own shared pool (threads named
    ``aiofranka-asyncify-N``, created on first use, :data:`ASYNCIFY_WORKERS`
    workers; see :func:`set_asyncify_workers`); pass ``executor=`` to use
    your own :class:`concurrent.futures.Executor` (its threads are then yours:
    aiofranka does not reset their scheduling policy).

    * ``wrapped.sync`` is the original function.
    * Works on methods: ``await obj.method(x)`` runs ``method`` bound to
      ``obj``; ``obj.method.sync(x)`` calls it directly.
    * The function's exception is raised at the ``await``; its traceback
      keeps the frames of the worker thread.
    * contextvars are copied into the call (like :func:`asyncio.to_thread`).
    * Cancelling the awaiting task returns at once; a call that already
      started keeps running in its thread to completion and its result is
      discarded (threads cannot be interrupted).  A call still queued behind
      busy workers is dropped without running.
    * A function raising ``StopIteration`` gives :class:`RuntimeError` (from
      it) at the await: asyncio cannot raise StopIteration into a Future.
    * The shared pool's threads are joined at interpreter exit (like the
      loop's default executor): a call that never returns delays exit.
      :func:`stop_asyncify_pool` stops the pool.
    """
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
    dispatch = functools.partial(_run_in_pool, executor)

    def decorate(f: Callable[P, R]) -> AsyncCallable[P, R]:
        _check_callable(f, "asyncify")
        return AsyncCallable(f, dispatch)

    if fn is None:
        return decorate
    return decorate(fn)


# --------------------------------------------------------------------------
# async_input
# --------------------------------------------------------------------------

_EOF = object()


class _StdinReader:
    """One daemon thread that reads stdin lines for :func:`async_input` callers.

    A line read for a caller that was cancelled meanwhile is kept for the
    next caller instead of being lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._requests: collections.deque = collections.deque()  # (loop, future, prompt)
        self._lines: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None

    def request(self, loop: asyncio.AbstractEventLoop, prompt: str) -> asyncio.Future:
        future = loop.create_future()
        with self._cond:
            if self._lines:
                future.set_result(self._lines.popleft())
                return future
            self._requests.append((loop, future, prompt))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name="aiofranka-input", daemon=True)
                self._thread.start()
            self._cond.notify()
        return future

    def _next_prompt(self) -> str:
        with self._cond:
            while True:
                while self._requests and self._requests[0][1].done():
                    self._requests.popleft()
                if self._requests:
                    return self._requests[0][2]
                self._cond.wait()

    def _main(self) -> None:
        demote_to_normal()
        while True:
            prompt = self._next_prompt()
            try:
                if prompt:
                    sys.stdout.write(prompt)
                    sys.stdout.flush()
                line = sys.stdin.readline()
                value: Any = _EOF if line == "" else line[:-1] if line.endswith("\n") else line
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                value = exc
            with self._cond:
                self._dispatch_locked(value)

    def _dispatch_locked(self, value: Any) -> None:
        while self._requests:
            loop, future, _ = self._requests.popleft()
            if future.done():
                continue
            try:
                loop.call_soon_threadsafe(self._deliver, loop, future, value)
                return
            except RuntimeError:  # that loop is closed
                continue
        if isinstance(value, str):  # keep the line for the next caller
            self._lines.append(value)
        # EOF and errors are not kept: the next read meets them again.

    def _deliver(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Any) -> None:
        if future.done():  # cancelled after the line was handed over: give it to the next one
            if isinstance(value, str):
                with self._cond:
                    if self._requests:
                        self._dispatch_locked(value)
                    else:
                        self._lines.appendleft(value)
            return
        if value is _EOF:
            future.set_exception(EOFError("EOF when reading a line"))
        elif isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


_stdin_reader = _StdinReader()


async def async_input(prompt: str = "") -> str:
    """``input()`` without blocking the event loop.

    Writes ``prompt`` to stdout, reads one line from ``sys.stdin`` on a
    daemon thread (a pending read never keeps the interpreter from exiting)
    and returns it without the trailing newline.  End of input raises
    :class:`EOFError` at the ``await``.  If the awaiting task is cancelled,
    the read stays pending and the line it eventually reads is returned by
    the next ``async_input`` call rather than lost.
    """
    loop = asyncio.get_running_loop()
    return await _stdin_reader.request(loop, str(prompt))
