"""aiofranka.threads: asyncify, async_input and CudaInferenceThread (no simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aiofranka import threads
from aiofranka.exceptions import OffloadError, WorkerCrashedError, WorkerStoppedError
from aiofranka.threads import CudaInferenceThread, asyncify

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every thread a test starts must be gone after it (the shared asyncify pool is shut down)."""
    before = set(threading.enumerate())
    yield
    threads.shutdown_asyncify_pool(wait=True)
    deadline = time.monotonic() + 3.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"leaked threads: {extra}"


def run_script(code: str, stdin: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=stdin, capture_output=True, timeout=timeout, cwd=ROOT, check=False,
    )


async def wait_for_event(event: threading.Event, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class Ticker:
    """Measures the largest gap between 1 ms ticks of the event loop."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> "Ticker":
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------- asyncify


def add(a: int, b: int = 2, *, scale: float = 1.0) -> float:
    """Add and scale."""
    return (a + b) * scale


async def test_asyncify_result_sync_and_worker_thread():
    wrapped = asyncify(add)
    assert await wrapped(1, 3, scale=2.0) == 8.0
    assert wrapped.sync is add
    assert wrapped.sync(1) == 3.0

    @asyncify
    def where() -> str:
        return threading.current_thread().name

    name = await where()
    assert name.startswith("aiofranka-asyncify-")
    assert name != threading.current_thread().name


async def test_asyncify_metadata_and_signature():
    wrapped = asyncify(add)
    assert wrapped.__name__ == "add"
    assert wrapped.__doc__ == "Add and scale."
    assert wrapped.__wrapped__ is add
    assert inspect.signature(wrapped) == inspect.signature(add)


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    @asyncify
    def bump(self, by: int) -> tuple[int, str]:
        """Bump the counter."""
        self.value += by
        return self.value, threading.current_thread().name


async def test_asyncify_method_descriptor():
    a, b = Counter(10), Counter(100)
    value, name = await a.bump(1)
    assert value == 11 and name.startswith("aiofranka-asyncify-")
    assert (await b.bump(5))[0] == 105
    assert a.value == 11 and b.value == 105
    # bound .sync runs in the caller's thread
    value, name = a.bump.sync(2)
    assert value == 13 and name == threading.current_thread().name
    # unbound access: the wrapper itself, self passed explicitly
    assert Counter.bump.sync(b, 1)[0] == 106
    assert (await Counter.bump(b, 1))[0] == 107
    assert list(inspect.signature(a.bump).parameters) == ["by"]
    assert list(inspect.signature(Counter.bump).parameters) == ["self", "by"]
    assert a.bump.__doc__ == "Bump the counter."


async def test_asyncify_custom_executor_and_decorator_form():
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine") as pool:

        @asyncify(executor=pool)
        def where() -> str:
            return threading.current_thread().name

        assert (await where()).startswith("mine")


def test_asyncify_rejects_coroutine_functions_and_non_callables():
    async def already():
        return 1

    with pytest.raises(TypeError, match="coroutine"):
        asyncify(already)
    with pytest.raises(TypeError, match="callable"):
        asyncify(42)


def boom(x: int) -> None:
    raise ValueError(f"bad value {x}")


async def test_asyncify_exception_keeps_worker_traceback():
    with pytest.raises(ValueError, match="bad value 7") as info:
        await asyncify(boom)(7)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "boom" in frames


async def test_asyncify_cancellation_returns_at_once_and_thread_finishes():
    started, finished = threading.Event(), threading.Event()

    @asyncify
    def slow() -> str:
        started.set()
        time.sleep(0.3)
        finished.set()
        return "discarded"

    task = asyncio.create_task(slow())
    assert await wait_for_event(started)
    t0 = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - t0 < 0.1
    assert not finished.is_set()  # still running in its thread
    assert await wait_for_event(finished)  # and it ran to completion


async def test_asyncify_does_not_block_the_event_loop():
    async with Ticker() as ticker:
        await asyncify(time.sleep)(0.2)
    assert ticker.ticks > 20
    assert ticker.max_gap < 0.05, f"loop blocked {ticker.max_gap * 1e3:.1f} ms"


FIFO_SCRIPT = """
import asyncio, json, os, threading
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except (PermissionError, OSError, AttributeError) as exc:
    print(json.dumps({"skip": repr(exc)}))
    raise SystemExit(0)
import aiofranka.threads as t

def policy():
    return os.sched_getscheduler(0)

out = {"main": policy()}
box = []
plain = threading.Thread(target=lambda: box.append(policy()))
plain.start(); plain.join()
out["plain"] = box[0]

async def main():
    out["asyncify"] = await t.asyncify(policy)()
    runner = t.CudaInferenceThread()
    async with runner:
        out["runner"] = await runner.run(policy)

asyncio.run(main())
t.shutdown_asyncify_pool()
print(json.dumps(out))
"""


def test_worker_threads_reset_fifo_scheduling():
    proc = run_script(FIFO_SCRIPT)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"SCHED_FIFO not permitted here: {out['skip']}")
    assert out["main"] == os.SCHED_FIFO
    assert out["plain"] == os.SCHED_FIFO  # what a thread inherits without the reset
    assert out["asyncify"] == os.SCHED_OTHER
    assert out["runner"] == os.SCHED_OTHER


# ---------------------------------------------------------------- async_input

INPUT_SCRIPT = """
import asyncio, json, sys, time
from aiofranka.threads import async_input

async def main():
    out = {"max_gap": 0.0}
    async def tick():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            out["max_gap"] = max(out["max_gap"], now - last)
            last = now
    ticker = asyncio.create_task(tick())
    try:
        await asyncio.wait_for(async_input(), 0.05)
    except asyncio.TimeoutError:
        out["timed_out"] = True
    print("READY", flush=True)
    out["a"] = await async_input("p> ")   # the line the cancelled read got
    out["b"] = await async_input()
    try:
        await async_input()
    except EOFError:
        out["eof"] = True
    ticker.cancel()
    print()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_async_input_reads_lines_and_eof_without_blocking():
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(INPUT_SCRIPT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "child exited"
            if line.strip() == b"READY":
                break
        time.sleep(0.2)  # the child's loop keeps ticking while its read waits
        proc.stdin.write(b"hello\nworld\n")
        proc.stdin.close()
        rest = proc.stdout.read().decode()
        assert proc.wait(timeout=10) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out = json.loads(rest.strip().splitlines()[-1])
    assert out["timed_out"] is True
    assert out["a"] == "hello" and out["b"] == "world"
    assert out["eof"] is True
    assert out["max_gap"] < 0.05


def test_async_input_pending_read_does_not_block_exit():
    code = """
    import asyncio
    from aiofranka.threads import async_input
    async def main():
        try:
            await asyncio.wait_for(async_input(), 0.05)
        except asyncio.TimeoutError:
            print("gave up", flush=True)
    asyncio.run(main())
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(timeout=15)  # stdin stays open: the pending read never completes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out, err = proc.stdout.read(), proc.stderr.read()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert proc.returncode == 0, err.decode()
    assert b"gave up" in out


# ---------------------------------------------------------------- CudaInferenceThread


async def test_runner_one_thread_for_every_call():
    async with CudaInferenceThread() as runner:
        idents = {await runner.run(threading.get_ident) for _ in range(20)}
        assert idents == {runner.thread_id}
        assert runner.thread_id != threading.get_ident()
        assert runner.cuda is False and runner.device == "cpu"
        assert runner.run_sync(threading.get_ident) == runner.thread_id
        names = await runner.run(lambda: threading.current_thread().name)
        assert names == "aiofranka-inference"


async def test_runner_fifo_under_concurrent_submissions():
    order: list[int] = []

    def record(i: int) -> int:
        order.append(i)
        time.sleep(0.0002)
        return i * i

    async with CudaInferenceThread() as runner:
        results = await asyncio.gather(*(runner.run(record, i) for i in range(50)))
        stats = runner.stats()
    assert order == list(range(50))
    assert results == [i * i for i in range(50)]
    assert stats.calls == 50 and stats.errors == 0 and stats.window == 50
    assert 0 < stats.run_p50_us <= stats.run_p99_us <= stats.run_max_us
    assert 0 <= stats.queue_wait_p50_us <= stats.queue_wait_p99_us <= stats.queue_wait_max_us


async def test_runner_exceptions_go_to_their_call_and_it_keeps_serving():
    async with CudaInferenceThread() as runner:
        with pytest.raises(ValueError, match="bad value 3") as info:
            await runner.run(boom, 3)
        frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "boom" in frames
        with pytest.raises(ValueError):
            runner.run_sync(boom, 4)
        assert await runner.run(add, 1, 1) == 2.0
        stats = runner.stats()
    assert stats.calls == 3 and stats.errors == 2


async def test_runner_run_before_start_and_after_stop():
    runner = CudaInferenceThread()
    assert runner.thread_id is None
    with pytest.raises(WorkerStoppedError, match="not started"):
        await runner.run(add, 1)
    with pytest.raises(WorkerStoppedError, match="not started"):
        runner.run_sync(add, 1)
    runner.start()
    runner.start()  # idempotent
    assert await runner.run(add, 1) == 3.0
    assert runner.stop() is True
    assert runner.stop() is True  # idempotent
    with pytest.raises(WorkerStoppedError):
        await runner.run(add, 1)
    with pytest.raises(WorkerStoppedError):
        runner.start()
    assert isinstance(WorkerStoppedError("x"), OffloadError)


async def test_runner_stop_fails_pending_calls():
    started, release = threading.Event(), threading.Event()

    def blocker() -> str:
        started.set()
        release.wait(5)
        return "done"

    runner = CudaInferenceThread().start()
    first = asyncio.create_task(runner.run(blocker))
    assert await wait_for_event(started)
    pending = [asyncio.create_task(runner.run(add, i)) for i in range(5)]
    await asyncio.sleep(0)  # let them submit
    timer = threading.Timer(0.05, release.set)
    timer.start()
    assert runner.stop(timeout=5.0) is True
    timer.join()
    assert await first == "done"  # the running call finishes and delivers
    for task in pending:
        with pytest.raises(WorkerStoppedError):
            await task


async def test_runner_stop_timeout_abandons_the_running_call():
    started, release = threading.Event(), threading.Event()

    def blocker() -> str:
        started.set()
        release.wait(5)
        return "late"

    runner = CudaInferenceThread().start()
    first = asyncio.create_task(runner.run(blocker))
    later = asyncio.create_task(runner.run(add, 1))
    assert await wait_for_event(started)
    t0 = time.perf_counter()
    assert await runner.astop(timeout=0.05) is False
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(WorkerStoppedError, match="still running"):
        await first
    with pytest.raises(WorkerStoppedError):
        await later
    release.set()
    assert runner.stop() is True  # joins now


async def test_runner_cancellation():
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    def blocker() -> str:
        started.set()
        release.wait(5)
        finished.set()
        return "discarded"

    async with CudaInferenceThread() as runner:
        first = asyncio.create_task(runner.run(blocker))
        assert await wait_for_event(started)
        queued = asyncio.create_task(runner.run(ran.append, "queued"))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        first.cancel()
        queued.cancel()
        for task in (first, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert time.perf_counter() - t0 < 0.1
        assert not finished.is_set()
        release.set()
        assert await runner.run(ran.append, "after") is None
        assert finished.is_set()
    assert ran == ["after"]  # the cancelled queued call never ran


async def test_runner_thread_death_fails_pending_and_later_calls():
    started, release = threading.Event(), threading.Event()

    def gate() -> str:
        started.set()
        release.wait(5)
        return "gate"

    def die() -> None:
        raise SystemExit(3)

    runner = CudaInferenceThread().start()
    try:
        first = asyncio.create_task(runner.run(gate))
        assert await wait_for_event(started)
        killer = asyncio.create_task(runner.run(die))
        pending = [asyncio.create_task(runner.run(add, i)) for i in range(3)]
        await asyncio.sleep(0)
        release.set()
        assert await first == "gate"
        with pytest.raises(WorkerCrashedError) as info:
            await killer
        assert isinstance(info.value.__cause__, SystemExit)
        for task in pending:
            with pytest.raises(WorkerCrashedError):
                await task
        with pytest.raises(WorkerCrashedError, match="SystemExit"):
            await runner.run(add, 1)
        with pytest.raises(WorkerCrashedError):
            runner.run_sync(add, 1)
    finally:
        assert runner.stop() is True


def test_runner_sync_context_manager_and_run_sync_guard():
    with CudaInferenceThread(name="ctx-runner") as runner:
        assert runner.running
        assert runner.run_sync(lambda: threading.current_thread().name) == "ctx-runner"
        with pytest.raises(RuntimeError, match="deadlock"):
            runner.run_sync(runner.run_sync, add, 1)
        assert runner.run_sync(add, 2, 2) == 4.0
    assert not runner.running
    with pytest.raises(WorkerStoppedError):
        runner.run_sync(add, 1)


async def test_runner_wrap_and_loop_not_blocked():
    async with CudaInferenceThread() as runner:

        @runner.wrap
        def slow_square(x: int) -> int:
            """Square slowly."""
            time.sleep(0.2)
            return x * x

        assert slow_square.__name__ == "slow_square"
        assert list(inspect.signature(slow_square).parameters) == ["x"]
        async with Ticker() as ticker:
            assert await slow_square(3) == 9
        assert ticker.max_gap < 0.05, f"loop blocked {ticker.max_gap * 1e3:.1f} ms"

        @runner.wrap
        def ident() -> int:
            return threading.get_ident()

        assert await ident() == runner.thread_id
        assert ident.sync() == threading.get_ident()


async def test_runner_runs_a_small_torch_model_on_cpu():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 7)).eval()
    x = torch.randn(4, 8)

    def infer(batch):
        with torch.no_grad():
            return model(batch)

    async with CudaInferenceThread() as runner:
        assert runner.cuda is False
        assert runner.device == "cpu"
        y = await runner.run(infer, x)
        assert y.shape == (4, 7)
        assert torch.allclose(y, infer(x))


def test_runner_does_not_import_torch():
    code = """
    import sys, aiofranka.threads as t
    r = t.CudaInferenceThread()
    r.start()
    assert r.run_sync(lambda: 41 + 1) == 42
    r.stop()
    print('torch' in sys.modules)
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "False"


TORCH_TEAM = """
    import os, asyncio, torch
    from aiofranka.threads import CudaInferenceThread, asyncify
    torch.set_num_threads(1)
    model, x = torch.nn.Linear(256, 256), torch.zeros(1, 256)

    def forward():
        for _ in range(50):
            model(x)
        return len(os.listdir("/proc/self/task"))  # threads of the process

    async def main():
        base = len(os.listdir("/proc/self/task"))
        with CudaInferenceThread() as runner:
            runner_count = runner.run_sync(forward)
        pooled = await asyncify(forward)()
        # each count holds the worker itself (+1) and should hold nothing more
        print(runner_count - base - 1, pooled - base - 1)

    asyncio.run(main())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenMP's default team is one thread on one CPU")
def test_worker_threads_follow_torchs_thread_count():
    """torch.set_num_threads(1) in the main thread reaches OpenMP for that thread
    only; a forward pass in another thread ran on a team of one thread per CPU
    (one extra thread here) until the helpers applied the count."""
    proc = run_script(TORCH_TEAM, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == ["0", "0"]  # no OpenMP team member beside either worker


def test_runner_validates_arguments():
    with pytest.raises(ValueError, match="name"):
        CudaInferenceThread(name="")
    with pytest.raises(ValueError, match="stats_window"):
        CudaInferenceThread(stats_window=0)
    runner = CudaInferenceThread()
    assert runner.stop() is True  # never started: nothing to join
    stats = runner.stats()
    assert stats.calls == 0 and stats.window == 0


async def test_runner_cuda_device_without_cuda_falls_back_to_cpu(caplog):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with caplog.at_level("WARNING", logger="aiofranka"):
        async with CudaInferenceThread(device="cuda:0") as runner:
            assert runner.cuda is False and runner.device == "cpu"
            assert await runner.run(add, 1) == 3.0
    assert "CUDA is not available" in caplog.text


def test_runner_cuda_device_without_torch_raises_missing_dependency():
    code = """
    import sys
    sys.modules["torch"] = None  # torch cannot be imported
    import aiofranka.threads as t
    from aiofranka.exceptions import MissingDependencyError
    r = t.CudaInferenceThread(device="cuda")
    try:
        r.start()
    except MissingDependencyError as exc:
        print("missing", "torch==2.13.0" in str(exc))
    r.stop()
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "missing True"


def raise_stop_iteration() -> None:
    raise StopIteration("done")


async def test_stop_iteration_is_converted_instead_of_hanging():
    # asyncio cannot raise StopIteration into a Future: the await would hang.
    with pytest.raises(RuntimeError, match="StopIteration") as info:
        await asyncio.wait_for(asyncify(raise_stop_iteration)(), 5)
    assert isinstance(info.value.__cause__, StopIteration)
    async with CudaInferenceThread() as runner:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(runner.run(raise_stop_iteration), 5)
        assert await runner.run(add, 0) == 2.0


class FakeDevice:
    def __init__(self, kind, index=None):
        if isinstance(kind, str) and ":" in kind:
            kind, index = kind.split(":")
        self.type, self.index = kind, None if index is None else int(index)


class FakeStream:
    def __init__(self, device=None):
        self.device = device
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


class FakeCuda:
    """Just enough of torch.cuda to follow the CUDA path without a GPU."""

    Stream = FakeStream

    def __init__(self):
        self.init_threads: list[int] = []
        self.set_device_calls: list[tuple[int, FakeDevice]] = []
        self.active: list[FakeStream] = []

    def is_available(self):
        return True

    def init(self):
        self.init_threads.append(threading.get_ident())

    def current_device(self):
        return 0

    def set_device(self, device):
        self.set_device_calls.append((threading.get_ident(), device))

    @contextlib.contextmanager
    def stream(self, stream):
        self.active.append(stream)
        try:
            yield
        finally:
            self.active.pop()


@pytest.mark.parametrize("device, expected", [(None, "cuda:0"), ("cuda:1", "cuda:1"), (2, "cuda:2")])
async def test_runner_cuda_path_with_a_fake_torch(monkeypatch, device, expected):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, device=FakeDevice))
    async with CudaInferenceThread(device=device) as runner:
        assert runner.cuda is True and runner.device == expected
        assert cuda.init_threads == [runner.thread_id]
        assert [ident for ident, _ in cuda.set_device_calls] == [runner.thread_id]
        seen = [await runner.run(lambda: list(cuda.active)) for _ in range(3)]
        stream = seen[0][0]
        assert all(s == [stream] for s in seen)  # every call inside the runner's own stream
        assert stream.synchronized == 3  # synchronised before each result
        with pytest.raises(ValueError):
            await runner.run(boom, 1)
        assert cuda.active == []
