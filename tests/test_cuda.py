"""aiofranka.offload.cuda: CudaInferenceThread (no simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
import time
import traceback
import types

import pytest

from _thread_helpers import Ticker, add, boom, no_leaked_threads, run_script, wait_for_event  # noqa: F401 - fixture
from aiofranka.exceptions import OffloadError, WorkerCrashedError, WorkerStoppedError
from aiofranka.offload import CudaInferenceThread


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
        stats = runner.stats
    assert order == list(range(50))
    assert results == [i * i for i in range(50)]
    assert stats.calls == 50 and stats.errors == 0 and stats.window == 50
    assert 0 < stats.run.p50_us <= stats.run.p99_us <= stats.run.max_us
    assert 0 <= stats.queue_wait.p50_us <= stats.queue_wait.p99_us <= stats.queue_wait.max_us


async def test_runner_exceptions_go_to_their_call_and_it_keeps_serving():
    async with CudaInferenceThread() as runner:
        with pytest.raises(ValueError, match="bad value 3") as info:
            await runner.run(boom, 3)
        frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "boom" in frames
        with pytest.raises(ValueError):
            runner.run_sync(boom, 4)
        assert await runner.run(add, 1, 1) == 2.0
        stats = runner.stats
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
    import sys, aiofranka.offload as t
    r = t.CudaInferenceThread()
    r.start()
    assert r.run_sync(lambda: 41 + 1) == 42
    r.stop()
    print('torch' in sys.modules)
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "False"


def test_runner_validates_arguments():
    with pytest.raises(ValueError, match="name"):
        CudaInferenceThread(name="")
    with pytest.raises(ValueError, match="stats_window"):
        CudaInferenceThread(stats_window=0)
    runner = CudaInferenceThread()
    assert runner.stop() is True  # never started: nothing to join
    stats = runner.stats
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
    import aiofranka.offload as t
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
