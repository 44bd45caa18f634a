"""CudaInferenceThread: one dedicated thread that runs every submitted call, in order.

For a model that should live on one thread for its whole life (its CUDA context and stream,
when torch and CUDA are there). Guide and failure modes: docs/async.md.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import logging
import queue
import sys
import threading
import time
from typing import Any, Callable, Coroutine, ParamSpec, TypeVar

from .._os import allowed_cpus, demote_to_normal
from ..exceptions import MissingDependencyError, WorkerCrashedError, WorkerStoppedError
from ..stats import Summary
from .to_thread import AsyncCallable, _check_callable, _follow_torch_threads, _stop_iteration_error

__all__ = ["CudaInferenceThread", "InferenceStats"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("aiofranka")


@dataclasses.dataclass(frozen=True)
class InferenceStats:
    """Figures of a :class:`CudaInferenceThread` (``runner.stats``), over its latest calls.

    ``calls`` and ``errors`` count every call served since start (errors: the function
    raised); ``pending``: calls queued now. ``queue_wait`` (submission to start of the call)
    and ``run`` (the call itself, including the CUDA stream synchronisation) summarise the
    most recent ``window`` calls, in microseconds (NaN before the first call).
    """

    calls: int
    errors: int
    pending: int
    window: int
    queue_wait: Summary
    run: Summary

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _summary(us) -> Summary:
    """The :class:`Summary` of a non-empty 1-D array of durations in µs."""
    import numpy as np

    p50, p99 = np.percentile(us, [50, 99])
    return Summary(int(us.size), float(p50), float(p99), float(us.max()), float(us.mean()))


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
      OpenMP's count per thread; see docs/async.md), so
      ``torch.set_num_threads(1)`` in the main thread also holds here.
      ``torch_threads``: ``"auto"`` (the default) runs the calls with one
      intra-op thread on a machine with two CPUs or fewer, where a team
      competes with the control loop and the simulator (a forward pass took
      5.5 ms on a team of two beside the loop against 0.6 ms on one thread,
      docs/async.md); an int sets that count; ``None`` follows
      ``torch.get_num_threads()`` alone. torch keeps one count per process:
      setting it here changes what ``torch.get_num_threads()`` reports elsewhere.
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

    def __init__(self, name: str = "aiofranka-inference", device: Any = None, *, stats_window: int = 10_000,
                 torch_threads: int | str | None = "auto") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        # (cap, exact) for _follow_torch_threads
        if torch_threads == "auto":
            self._torch_threads = (1 if len(allowed_cpus()) <= 2 else None, None)
        elif torch_threads is None:
            self._torch_threads = (None, None)
        elif isinstance(torch_threads, int) and not isinstance(torch_threads, bool) and torch_threads >= 1:
            self._torch_threads = (None, torch_threads)
        else:
            raise ValueError(f"torch_threads must be 'auto', None or an int >= 1, got {torch_threads!r}")
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

    @property
    def stats(self) -> InferenceStats:
        """Counts, and queue wait and run time of the latest calls (µs)."""
        with self._stats_lock:
            samples = list(self._samples)
            calls, errors = self._calls, self._errors
        queue_wait = run = Summary.empty()
        if samples:
            import numpy as np

            data = np.asarray(samples, dtype=np.float64) / 1000.0
            queue_wait, run = _summary(data[:, 0]), _summary(data[:, 1])
        return InferenceStats(calls=calls, errors=errors, pending=self._queue.qsize(), window=len(samples),
                              queue_wait=queue_wait, run=run)

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
            demote_to_normal()
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
                _follow_torch_threads(*self._torch_threads)
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
