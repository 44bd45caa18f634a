"""aiofranka.offload.to_thread: asyncify and async_input (no simulator)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from _thread_helpers import ROOT, Ticker, add, boom, no_leaked_threads, run_script, wait_for_event  # noqa: F401 - fixture
from aiofranka.offload import CudaInferenceThread, asyncify


# ---------------------------------------------------------------- asyncify


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
import aiofranka.offload as t

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
t.stop_asyncify_pool()
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
from aiofranka.offload import async_input

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
    from aiofranka.offload import async_input
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


# ---------------------------------------------------------------- every worker thread

TORCH_TEAM = """
    import os, asyncio, torch
    from aiofranka.offload import CudaInferenceThread, asyncify
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


AUTO_TEAM = """
    import os, torch
    from aiofranka.offload import CudaInferenceThread
    model, x = torch.nn.Linear(256, 256), torch.zeros(1, 256)

    def forward():
        for _ in range(50):
            model(x)
        return len(os.listdir("/proc/self/task")), torch.get_num_threads()

    base = len(os.listdir("/proc/self/task"))
    for threads in ("auto", None, 2):
        with CudaInferenceThread(torch_threads=threads) as runner:
            count, reported = runner.run_sync(forward)
        print(count - base - 1, reported)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="the auto count is one thread on a 2-CPU machine")
def test_the_inference_thread_runs_one_torch_thread_on_a_two_cpu_machine():
    """No torch.set_num_threads() anywhere: on two CPUs "auto" runs the calls without an
    OpenMP team (a team of two took 5.5 ms per forward beside the loop, one thread 0.6 ms);
    None follows torch's own count (a team of two); an int sets the count."""
    proc = run_script(AUTO_TEAM, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    assert lines[0] == ["0", "1"], lines  # auto: the worker alone, one thread
    assert int(lines[2][1]) == 2 and int(lines[2][0]) >= 1, lines  # 2: a team member beside the worker


def test_torch_threads_is_checked():
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError, match="torch_threads"):
            CudaInferenceThread(torch_threads=bad)


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
