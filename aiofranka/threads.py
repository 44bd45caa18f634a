"""Thread offload helpers that keep the event loop free while the arm runs.

The 1 kHz loop shares the event loop (or at least the GIL) with everything
else in the program, so anything slow -- a blocking library call, reading the
keyboard, a neural network forward pass -- must run in another thread and
come back to the loop as an ``await``.  This module provides three tools:

:func:`asyncify`
    Wraps a plain function or method so that ``await wrapped(...)`` runs it in
    a worker thread of a small pool owned by aiofranka (not the event loop's
    default executor).  ``wrapped.sync`` is the original.

:func:`async_input`
    ``input()`` for coroutines: reads one line from stdin on a daemon thread.

:class:`CudaInferenceThread`
    One persistent thread that serves every call in order (FIFO).  When torch
    is in use and CUDA is available it owns a CUDA context and stream, so a
    model lives on one thread for its whole life.

Every thread created here resets itself to ``SCHED_OTHER`` when it finds
that it inherited ``SCHED_FIFO``/``SCHED_RR`` (constructing a
``pylibfranka.Robot`` promotes the calling thread to FIFO 99, and threads
created from it later inherit that): offloaded work must never outrank the
control loop.

Cancellation
------------
A Python thread cannot be interrupted.  Cancelling the task that awaits an
offloaded call returns control at once (``CancelledError`` at the ``await``),
but a call that already started **keeps running in its thread until it
returns**, and its result (or exception) is discarded.  A call that was still
queued when it was cancelled is skipped and never runs.  Side effects of a
cancelled call may therefore still happen; do not rely on cancellation to
stop them.

GIL
---
These helpers move work off the event loop, not off the GIL.  Pure-Python
work in a worker thread still competes with the control loop for the GIL;
numpy and torch release it in their kernels.  On small machines torch's own
intra-op thread pool can starve the rest of the program: consider
``torch.set_num_threads(1)`` (aiofranka does not choose the count for you).

torch's count is set per thread underneath (OpenMP keeps one per thread): a
thread other than the one that called ``torch.set_num_threads`` runs its
operators on a team of one thread per CPU while ``torch.get_num_threads()``
still reports the value set, so the CPU you meant to leave to the control
loop is taken after all (the team also spins between operators).  The worker
threads of these helpers therefore apply ``torch.get_num_threads()`` to
themselves before each call when it changed (only when torch is already
imported).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import itertools
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Concatenate, Coroutine, Generic, ParamSpec, TypeVar, overload

from .exceptions import MissingDependencyError, WorkerCrashedError, WorkerStoppedError

__all__ = [
    "ASYNCIFY_WORKERS",
    "AsyncCallable",
    "CudaInferenceThread",
    "InferenceStats",
    "async_input",
    "asyncify",
    "reset_thread_scheduling",
    "set_asyncify_workers",
    "shutdown_asyncify_pool",
]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")

log = logging.getLogger("aiofranka")

#: Default number of workers in the shared :func:`asyncify` pool.
ASYNCIFY_WORKERS = 4


# --------------------------------------------------------------------------
# scheduling
# --------------------------------------------------------------------------

def reset_thread_scheduling() -> bool:
    """Put the calling thread back on ``SCHED_OTHER`` if it runs FIFO or RR.

    Returns True when the policy was changed.  Errors (no permission, no
    ``os.sched_*`` on this platform) are ignored: the thread then keeps the
    policy it has.  On Linux the call applies to the calling thread only.
    """
    try:
        policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            return True
    except (AttributeError, OSError):
        pass
    return False


def thread_scheduling(tid: int) -> tuple | None:
    """``(tid, policy, priority)`` of a thread of this process (its native id);
    None where it cannot be read. :func:`restore_thread_scheduling` takes it back."""
    try:
        return tid, os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority
    except (AttributeError, OSError):
        return None


def restore_thread_scheduling(saved: tuple | None, *, unless_changed_from: tuple | None = None) -> None:
    """Put a thread back on a policy saved by :func:`thread_scheduling`.

    With ``unless_changed_from``, only if the thread still runs that policy
    (something else may have changed it meanwhile). A thread that has exited,
    or a change this process may not make, is ignored.
    """
    if saved is None:
        return
    tid, policy, priority = saved
    if unless_changed_from is not None and thread_scheduling(tid) != unless_changed_from:
        return
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(priority))
    except (AttributeError, OSError):
        pass


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


def _follow_torch_threads() -> None:
    """Apply ``torch.get_num_threads()`` to the calling thread, if it changed.

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
        count = torch.get_num_threads()
        if getattr(_torch_threads, "count", None) != count:
            torch.set_num_threads(count)
            _torch_threads.count = count
    except Exception:  # noqa: BLE001 - a partly imported or stubbed torch: leave it be
        pass


def _asyncify_initializer() -> None:
    threading.current_thread().name = f"aiofranka-asyncify-{next(_worker_numbers)}"
    reset_thread_scheduling()


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


def shutdown_asyncify_pool(wait: bool = True) -> None:
    """Shut the shared :func:`asyncify` pool down; it is created again on next use.

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
      :func:`shutdown_asyncify_pool` shuts the pool down.
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
        reset_thread_scheduling()
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


# --------------------------------------------------------------------------
# CudaInferenceThread
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InferenceStats:
    """Figures of a :class:`CudaInferenceThread`, over its latest calls.

    ``calls`` and ``errors`` count every call served since start (errors:
    the function raised).  Queue wait is submission to start of the call,
    run time is the call itself (including the CUDA stream synchronisation);
    both in microseconds over the most recent ``window`` calls (NaN before
    the first call).
    """

    calls: int
    errors: int
    pending: int
    window: int
    queue_wait_p50_us: float
    queue_wait_p99_us: float
    queue_wait_max_us: float
    run_p50_us: float
    run_p99_us: float
    run_max_us: float


class _Call:
    __slots__ = ("fn", "args", "kwargs", "ctx", "loop", "future", "submitted_ns")

    def __init__(self, fn, args, kwargs, loop, future) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.ctx = contextvars.copy_context()
        self.loop = loop  # None: future is a concurrent.futures.Future (run_sync)
        self.future = future
        self.submitted_ns = time.perf_counter_ns()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def deliver(self, ok: bool, value: Any) -> None:
        """Hand the outcome to the caller, from any thread; ignored if it is gone."""
        if self.loop is None:
            future: concurrent.futures.Future = self.future
            try:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except concurrent.futures.InvalidStateError:
                pass
            return
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, ok, value)
        except RuntimeError:  # the caller's loop is closed: nobody waits
            pass


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile, or already failed by stop()
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _LoopWaiters:
    """Futures on any loop that are set once when a one-shot event fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def wait(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._fired:
                future.set_result(None)
            else:
                self._waiters.append((loop, future))
        return future

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_settle, future, True, None)
            except RuntimeError:
                pass


_STOP = object()

_NEW, _RUNNING, _STOPPED, _CRASHED = "new", "running", "stopped", "crashed"


def _names_cuda(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True  # torch convention: an int is a CUDA device index
    if isinstance(device, str):
        return device.strip().lower().startswith("cuda")
    return getattr(device, "type", None) == "cuda"  # torch.device


class CudaInferenceThread:
    """One dedicated thread that runs every submitted call, in submission order.

    Use it for model inference beside the control loop::

        runner = CudaInferenceThread()
        async with runner:                       # or runner.start() ... runner.stop()
            action = await runner.run(policy, obs)

        @runner.wrap
        def infer(obs): ...
        action = await infer(obs)                # infer.sync(obs) calls it directly

    * **One thread, FIFO.**  Every call runs on the same thread
      (:attr:`thread_id`), one at a time, in the order submitted.  A call's
      exception is raised at its ``await`` (with the worker's traceback) and
      the thread keeps serving.
    * **CUDA.**  If torch is already imported (``"torch" in sys.modules``) or
      ``device`` names a CUDA device (``"cuda"``, ``"cuda:1"``, an int, a
      ``torch.device``), and ``torch.cuda.is_available()``, the thread
      initialises CUDA once when it starts, makes ``device`` current and
      creates a stream of its own; every call runs inside
      ``torch.cuda.stream(stream)`` and the stream is synchronised before the
      result is returned.  Otherwise calls run plainly (on the CPU); a CUDA
      ``device`` without CUDA falls back to the CPU with a logged warning.
      torch is never imported by this class unless it is already imported or
      ``device`` names CUDA.
    * **Scheduling.**  The thread resets itself to ``SCHED_OTHER`` if it
      inherited a real-time policy.  Before each call it applies
      ``torch.get_num_threads()`` to itself when that changed (torch sets
      OpenMP's count per thread; see the module notes), so
      ``torch.set_num_threads(1)`` in the main thread also holds here; on
      small machines it is often a good idea.
    * **Stop.**  :meth:`stop` fails every queued call with
      :class:`WorkerStoppedError` and joins the thread; later calls raise it
      too.  A call already running cannot be interrupted: stop waits for it
      up to ``timeout``; if it is still running then, its caller gets
      :class:`WorkerStoppedError` and its eventual result is discarded.
    * **Crash.**  If the thread dies (a ``BaseException`` such as
      ``SystemExit`` escaping a call, or an internal error), that call, every
      queued call and every later call raise :class:`WorkerCrashedError`
      (its ``__cause__`` is what killed the thread).
    * **Cancellation** of an awaiting task returns at once; a queued call is
      skipped, a running one finishes and its result is discarded.

    The thread is a daemon thread: a call that never returns does not keep
    the interpreter from exiting.  Stop the runner before exit anyway.
    """

    def __init__(self, name: str = "aiofranka-inference", device: Any = None, *, stats_window: int = 10_000) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if not isinstance(stats_window, int) or stats_window < 1:
            raise ValueError(f"stats_window must be a positive int, got {stats_window!r}")
        self._name = name
        self._requested_device = device
        self._lock = threading.Lock()
        self._state = _NEW
        self._crash_cause: BaseException | None = None
        self._init_error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ready_waiters = _LoopWaiters()
        self._exit_waiters = _LoopWaiters()
        self._current: _Call | None = None
        self._cuda = False
        self._device = "cpu"
        self._stream: Any = None
        self._stats_lock = threading.Lock()
        self._samples: collections.deque = collections.deque(maxlen=stats_window)
        self._calls = 0
        self._errors = 0

    # -- properties ------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def thread_id(self) -> int | None:
        """``threading.get_ident()`` of the worker thread (None before start)."""
        return self._thread.ident if self._thread is not None else None

    @property
    def cuda(self) -> bool:
        """True when calls run on a CUDA stream (known once the thread is ready)."""
        return self._cuda

    @property
    def device(self) -> str:
        """``"cuda:N"`` when CUDA is used, else ``"cpu"``."""
        return self._device

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    def __repr__(self) -> str:
        return f"<CudaInferenceThread {self._name!r} {self._state} device={self._device}>"

    # -- lifecycle -------------------------------------------------------

    def _spawn(self) -> bool:
        """Start the thread if new; True if this call started it."""
        with self._lock:
            if self._state == _STOPPED:
                raise WorkerStoppedError(f"{self._name}: stopped; create a new CudaInferenceThread")
            if self._state != _NEW:
                return False
            self._state = _RUNNING
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
            return True

    def _raise_init_error(self) -> None:
        exc = self._init_error
        if exc is None:
            return
        if isinstance(exc, ImportError):
            raise MissingDependencyError(
                f"{self._name}: device={self._requested_device!r} needs torch; "
                "install it with `pip install torch==2.13.0`"
            ) from exc
        raise WorkerCrashedError(f"{self._name}: the thread failed to initialise: {exc!r}") from exc

    def start(self, timeout: float | None = None) -> "CudaInferenceThread":
        """Start the thread and wait until it is ready (idempotent).

        Without CUDA this takes well under a millisecond.  With CUDA the
        context creation can take seconds: from a running event loop use
        ``await runner.astart()`` or ``async with runner`` instead.
        Raises :class:`WorkerStoppedError` after :meth:`stop`, and
        :class:`WorkerCrashedError` (or :class:`MissingDependencyError`) when
        the thread cannot initialise.
        """
        self._spawn()
        if threading.current_thread() is not self._thread:
            self._ready.wait(timeout)
        self._raise_init_error()
        return self

    async def astart(self) -> "CudaInferenceThread":
        """:meth:`start` without blocking the event loop while the thread initialises."""
        self._spawn()
        await self._ready_waiters.wait()
        self._raise_init_error()
        return self

    def _shut(self) -> bool:
        """Mark stopped, fail queued calls, post the sentinel. True if the thread may still run."""
        with self._lock:
            if self._state == _NEW:
                self._state = _STOPPED
                return False
            if self._state == _RUNNING:
                self._state = _STOPPED
                pending = self._drain_locked()
                self._queue.put(_STOP)
            else:
                pending = []
                self._state = _STOPPED if self._state != _CRASHED else self._state
        for call in pending:
            call.deliver(False, WorkerStoppedError(f"{self._name}: stopped before this call ran"))
        return self._thread is not None

    def _abandon_current(self) -> None:
        call = self._current
        if call is not None:
            call.deliver(False, WorkerStoppedError(
                f"{self._name}: stopped while this call was still running; "
                "it keeps running in the thread and its result is discarded"))

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the thread (idempotent); True when it has exited.

        Queued calls fail with :class:`WorkerStoppedError` at once; the call
        running now may finish for up to ``timeout`` seconds (its caller gets
        its result), after which its caller gets :class:`WorkerStoppedError`.
        Calling ``stop`` again joins again.  Blocks the calling thread up to
        ``timeout``: from a running event loop prefer ``await runner.astop()``.
        """
        if not self._shut():
            return True
        thread = self._thread
        assert thread is not None
        if threading.current_thread() is thread:  # stop() from inside a call: cannot join ourselves
            return False
        thread.join(timeout)
        if thread.is_alive():
            self._abandon_current()
            return False
        return True

    async def astop(self, timeout: float | None = 5.0) -> bool:
        """:meth:`stop` that waits for the thread without blocking the event loop."""
        if not self._shut():
            return True
        thread = self._thread
        assert thread is not None
        if threading.current_thread() is thread:
            return False
        try:
            await asyncio.wait_for(self._exit_waiters.wait(), timeout)
        except asyncio.TimeoutError:
            self._abandon_current()
            return False
        thread.join(1.0)  # it has left _main; this returns at once
        return not thread.is_alive()

    def __enter__(self) -> "CudaInferenceThread":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "CudaInferenceThread":
        return await self.astart()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.astop()

    # -- submission --------------------------------------------------------

    def _refusal(self) -> BaseException:
        if self._state == _NEW:
            return WorkerStoppedError(
                f"{self._name}: not started; call start(), or use 'with' / 'async with'")
        if self._state == _CRASHED:
            err = WorkerCrashedError(f"{self._name}: the thread died: {self._crash_cause!r}")
            err.__cause__ = self._crash_cause
            return err
        return WorkerStoppedError(f"{self._name}: stopped")

    def _submit(self, call: _Call) -> None:
        with self._lock:
            if self._state != _RUNNING:
                raise self._refusal()
            self._queue.put(call)

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` on the thread and return its result."""
        loop = asyncio.get_running_loop()
        call = _Call(fn, args, kwargs, loop, loop.create_future())
        self._submit(call)
        return await call.future

    def run_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on the thread and block the calling thread until it returns.

        Never call it from the event loop while the arm runs (it blocks);
        raises :class:`RuntimeError` when called from the runner's own thread,
        where it would deadlock.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError(
                f"{self._name}: run_sync() called from the runner's own thread would deadlock; "
                "call the function directly")
        call = _Call(fn, args, kwargs, None, concurrent.futures.Future())
        self._submit(call)
        return call.future.result()

    def wrap(self, fn: Callable[P, R]) -> AsyncCallable[P, R]:
        """Decorator: ``await wrapped(...)`` runs ``fn`` on this thread; ``wrapped.sync`` is ``fn``."""
        _check_callable(fn, "CudaInferenceThread.wrap")
        return AsyncCallable(fn, self._dispatch)

    def _dispatch(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Coroutine[Any, Any, Any]:
        return self.run(fn, *args, **kwargs)

    # -- statistics ----------------------------------------------------------

    def stats(self) -> InferenceStats:
        """Counts and percentiles of queue wait and run time (µs)."""
        with self._stats_lock:
            samples = list(self._samples)
            calls, errors = self._calls, self._errors
        nan = float("nan")
        if samples:
            import numpy as np

            data = np.asarray(samples, dtype=np.float64) / 1000.0
            wait_p50, wait_p99 = np.percentile(data[:, 0], [50, 99])
            run_p50, run_p99 = np.percentile(data[:, 1], [50, 99])
            wait_max, run_max = data[:, 0].max(), data[:, 1].max()
        else:
            wait_p50 = wait_p99 = wait_max = run_p50 = run_p99 = run_max = nan
        return InferenceStats(
            calls=calls, errors=errors, pending=self._queue.qsize(), window=len(samples),
            queue_wait_p50_us=float(wait_p50), queue_wait_p99_us=float(wait_p99),
            queue_wait_max_us=float(wait_max), run_p50_us=float(run_p50),
            run_p99_us=float(run_p99), run_max_us=float(run_max),
        )

    # -- the thread ----------------------------------------------------------

    def _drain_locked(self) -> list[_Call]:
        pending: list[_Call] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return pending
            if item is not _STOP:
                pending.append(item)

    def _init_device(self) -> None:
        device = self._requested_device
        wants_cuda = _names_cuda(device)
        if not wants_cuda and sys.modules.get("torch") is None:
            return
        import torch  # noqa: PLC0415 - on purpose: only when already imported or CUDA is asked for

        if device is not None and not wants_cuda:
            return  # an explicit CPU device
        if not torch.cuda.is_available():
            if wants_cuda:
                log.warning("%s: device=%r but CUDA is not available; running on the CPU", self._name, device)
            return
        torch.cuda.init()
        if device is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif isinstance(device, int):
            dev = torch.device("cuda", device)
        else:
            dev = torch.device(device)
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        self._stream = torch.cuda.Stream(device=dev)
        self._device = f"cuda:{dev.index}"
        self._cuda = True

    def _crash(self, cause: BaseException) -> None:
        with self._lock:
            self._crash_cause = cause
            if self._state == _RUNNING:
                self._state = _CRASHED
            pending = self._drain_locked()
        current, self._current = self._current, None
        if current is not None:
            pending.insert(0, current)
        for call in pending:
            err = WorkerCrashedError(f"{self._name}: the thread died: {cause!r}")
            err.__cause__ = cause
            call.deliver(False, err)

    def _main(self) -> None:
        try:
            reset_thread_scheduling()
            try:
                self._init_device()
            except BaseException as exc:  # noqa: BLE001 - reported by start() and to every call
                self._init_error = exc
                self._crash(exc)
                return
            finally:
                self._ready.set()
                self._ready_waiters.fire()
            self._serve()
        finally:
            self._exit_waiters.fire()

    def _serve(self) -> None:
        get = self._queue.get
        clock = time.perf_counter_ns
        stream = self._stream
        stream_ctx: Any = None
        if stream is not None:
            import torch  # already imported by _init_device

            stream_ctx = torch.cuda.stream
        samples, stats_lock = self._samples, self._stats_lock
        try:
            while True:
                call = get()
                if call is _STOP:
                    return
                if call.cancelled():
                    continue
                self._current = call
                _follow_torch_threads()
                started = clock()
                ok = True
                try:
                    if stream is not None:
                        with stream_ctx(stream):
                            value = call.ctx.run(call.fn, *call.args, **call.kwargs)
                        stream.synchronize()
                    else:
                        value = call.ctx.run(call.fn, *call.args, **call.kwargs)
                except StopIteration as exc:  # asyncio refuses it: convert
                    ok, value = False, _stop_iteration_error(exc)
                except Exception as exc:  # noqa: BLE001 - delivered to this call only
                    ok, value = False, exc
                ended = clock()
                self._current = None
                with stats_lock:
                    self._calls += 1
                    if not ok:
                        self._errors += 1
                    samples.append((started - call.submitted_ns, ended - started))
                call.deliver(ok, value)
                del call, value
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. or an internal error: the thread dies
            self._crash(exc)
