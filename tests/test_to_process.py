"""Tests of aiofranka.offload.to_process: mpify / ampify and ProcessProxy (no simulator needed)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import _process_targets as targets
from aiofranka.exceptions import (
    CallTimeoutError,
    OffloadError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashedError,
    WorkerStoppedError,
)
from aiofranka.offload import ProcessProxy, ampify, mpify
from aiofranka.offload._proxy import link_of

TESTS_DIR = Path(__file__).resolve().parent
SHM = Path("/dev/shm")


def _shm_names(prefix: str = "afk") -> set[str]:
    try:
        return {p.name for p in SHM.iterdir() if p.name.startswith(prefix)}
    except OSError:
        return set()


def _our_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("aiofranka-mpify")]


def _pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie left for an absent reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _token(proxy: ProcessProxy) -> str:
    token = link_of(proxy)._token
    assert token  # the child was spawned
    return token


def _assert_cleaned(proxy: ProcessProxy) -> None:
    assert proxy.pid not in [p.pid for p in multiprocessing.active_children()]
    deadline = time.monotonic() + 2.0
    while _shm_names(f"afk{_token(proxy)}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _shm_names(f"afk{_token(proxy)}") == set()


def _leaked() -> set[str]:
    """Segments of this process, or of a process that is gone (a child of ours that leaked them).

    A segment's name ends with its creator's pid: other test runs sharing /dev/shm
    (whose live processes make and unlink segments meanwhile) are left out.
    """
    leaked = set()
    for name in _shm_names():
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or _pid_gone(int(pid))):
            leaked.add(name)
    return leaked


@pytest.fixture(scope="module", autouse=True)
def no_leaks():
    """Every child and every shared-memory segment made by this module is gone at its end."""
    before = _leaked()
    yield
    deadline = time.monotonic() + 3.0
    while (_our_children() or _leaked() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _our_children() == []
    assert _leaked() - before == set()


@pytest.fixture(scope="module")
def proxy():
    """One child shared by the read-only tests (each test runs on its own event loop)."""
    with mpify(targets.Worker, tag="shared") as shared:
        yield shared
    _assert_cleaned(shared)


# --------------------------------------------------------------------------- calls


async def test_results_come_back_in_fifo_order(proxy):
    await proxy.take_log()
    finished = []
    calls = [asyncio.ensure_future(proxy.record(i)) for i in range(50)]
    for call in calls:
        call.add_done_callback(lambda fut: finished.append(fut.result()))
    assert await asyncio.gather(*calls) == list(range(50))
    assert finished == list(range(50))
    assert await proxy.take_log() == list(range(50))


async def test_concurrent_calls_each_get_their_own_answer(proxy):
    results = await asyncio.gather(*(proxy.add(i, i * i) for i in range(16)))
    assert results == [i + i * i for i in range(16)]
    images = [np.full((224, 224, 3), i, dtype=np.uint8) for i in range(16)]
    echoed = await asyncio.gather(*(proxy.echo({"i": i, "image": img}) for i, img in enumerate(images)))
    for i, reply in enumerate(echoed):
        assert reply["i"] == i
        np.testing.assert_array_equal(reply["image"], images[i])


async def test_exception_comes_back_typed_with_remote_traceback(proxy):
    with pytest.raises(ValueError, match="boom") as info:
        await proxy.fail_in_child("boom")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_in_child" in cause.text
    assert "fail_in_child" in str(cause)
    assert await proxy.add(1, 1) == 2  # the proxy still works


@pytest.mark.parametrize(
    ("method", "remote_type"),
    [("raise_unpicklable", "UnpicklableError"), ("raise_unloadable", "TwoArgError")],
)
async def test_exception_that_cannot_travel_becomes_remote_error(proxy, method, remote_type):
    with pytest.raises(RemoteError) as info:
        await proxy.call(method)
    assert remote_type in info.value.remote_type
    assert method in info.value.remote_traceback
    assert isinstance(info.value.__cause__, RemoteTraceback)


async def test_attribute_access(proxy):
    assert await proxy.value == 42
    assert await proxy.tag == "shared"
    assert await proxy.get("value") == 42
    with pytest.raises(AttributeError, match="nope"):
        await proxy.nope
    with pytest.raises(AttributeError, match="nope"):
        await proxy.nope(1)
    with pytest.raises(TypeError, match="call it"):
        await proxy.echo  # a method, not a value
    assert await proxy.call("echo", 5) == 5


async def test_private_looking_names_reach_the_remote_object(proxy):
    assert await proxy._last_timing == {"infer_ms": 1.5}
    assert await proxy._scaled(2) == 84  # a private method stays a method
    with pytest.raises(AttributeError, match="'_nope'"):
        await proxy._nope
    with pytest.raises(AttributeError, match="__nope__"):
        proxy.__nope__  # noqa: B018 - dunder names stay the proxy's (protocols probe them)
    with pytest.raises(AttributeError, match="cannot set 'value'"):
        proxy.value = 1
    assert await proxy.value == 42


async def test_async_method_in_child_is_awaited_there(proxy):
    assert await proxy.async_add(2, 3) == 5


async def test_lambdas_travel_both_ways(proxy):
    double = await proxy.echo(lambda x: 2 * x)  # plain pickle fails: cloudpickle takes over
    assert double(21) == 42
    increment = await proxy.make_callable_result()
    assert increment(1) == 2


def test_call_sync_outside_the_loop(proxy):
    assert proxy.call_sync("add", 2, 3) == 5
    assert proxy.get_sync("value") == 42
    with pytest.raises(ValueError):
        proxy.call_sync("fail_in_child", "sync")
    assert proxy.running and proxy.pid > 0


def test_call_sync_timeout_gives_up_and_drops_the_late_reply(proxy):
    discarded = proxy.stats.replies_discarded
    t0 = time.monotonic()
    with pytest.raises(CallTimeoutError, match="'slow'") as info:
        proxy.call_sync_timeout(0.1, "slow", 0.4, "late")
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 < 0.3
    assert proxy.call_sync_timeout(2.0, "add", 1, 2) == 3  # after the late reply, which was dropped
    assert proxy.stats.replies_discarded == discarded + 1
    with pytest.raises(ValueError, match="timeout"):
        proxy.call_sync_timeout(0, "add", 1, 2)


async def test_call_sync_from_another_thread_while_the_loop_reads(proxy):
    assert await proxy.add(1, 1) == 2  # the running loop now owns the pipe
    assert await asyncio.to_thread(proxy.call_sync, "add", 20, 22) == 42


async def test_call_sync_inside_the_loop_refuses(proxy):
    with pytest.raises(RuntimeError, match="block the running event loop"):
        proxy.call_sync("add", 1, 2)


def test_proxy_moves_between_event_loops(proxy):
    async def once(i):
        return await proxy.add(i, 1)

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 3
    assert proxy.call_sync("add", 3, 1) == 4


async def test_cancelled_call_discards_its_late_reply(proxy):
    discarded = proxy.stats.replies_discarded
    task = asyncio.ensure_future(proxy.slow(0.3, "late"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await proxy.add(2, 3) == 5  # FIFO: the late reply arrived first and was dropped
    assert proxy.stats.replies_discarded == discarded + 1
    assert await proxy.echo("still fine") == "still fine"


async def test_mpify_inside_a_running_loop_returns_at_once_and_the_first_calls_wait():
    proxy = mpify(targets.Worker, tag="early")
    try:
        assert not proxy.running  # the child cannot have started an interpreter yet
        # Made before the child is ready: each waits for it, then runs.
        early = asyncio.gather(proxy.add(1, 2), proxy.tag, proxy._last_timing,
                               asyncio.to_thread(proxy.call_sync, "add", 2, 2))
        assert await asyncio.wait_for(early, 60) == [3, "early", {"infer_ms": 1.5}, 4]
        assert proxy.running
        await proxy.ready()  # ready already: returns at once
    finally:
        await proxy.astop()
    _assert_cleaned(proxy)


async def test_factory_error_inside_a_loop_is_raised_by_ready_and_by_calls():
    before = {child.pid for child in _our_children()}
    proxy = mpify(targets.broken_factory, "late")
    with pytest.raises(targets.FactoryError, match="cannot build: late") as info:
        await proxy.ready()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "broken_factory" in info.value.__cause__.text
    with pytest.raises(targets.FactoryError, match="cannot build: late"):
        await proxy.add(1, 2)
    first_call = mpify(targets.broken_factory, "first")  # no ready(): the first call raises it
    with pytest.raises(targets.FactoryError, match="cannot build: first"):
        await first_call.add(1, 2)
    for failed in (proxy, first_call):
        assert not failed.running
        await failed.astop()  # a failed start needs no stop; it is harmless
    assert {child.pid for child in _our_children()} == before


@pytest.mark.timing
async def test_mpify_and_stop_on_the_event_loop_never_block_it():
    gaps: list[float] = []
    running = True

    async def ticker():
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    worker = mpify(targets.Worker)  # returns at once; the child starts in the background
    assert await worker.add(2, 2) == 4
    busy = asyncio.ensure_future(worker.slow(1.0))
    await asyncio.sleep(0.1)  # the child is inside slow(): it reads STOP only after it
    started = time.perf_counter()
    worker.stop()  # on the loop's thread: returns at once, a helper thread waits for the exit
    took = time.perf_counter() - started
    with pytest.raises(WorkerStoppedError):
        await busy
    with pytest.raises(WorkerStoppedError):
        await worker.add(1, 2)
    await worker.astop()  # waits for the stop under way
    running = False
    await tick
    # Joining the child here would take ~0.9 s (the rest of slow()); a busy host, ~0.2 s at worst.
    assert took < 0.5, f"stop() held the event loop for {took * 1000:.0f} ms"
    assert max(gaps) < 0.5, f"the loop stalled for {max(gaps) * 1000:.1f} ms"
    assert not worker.running
    _assert_cleaned(worker)


async def test_stop_while_the_child_starts_leaves_nothing():
    before = {child.pid for child in _our_children()}
    before_shm = _shm_names()
    proxy = mpify(targets.Worker)
    proxy.stop()
    with pytest.raises(WorkerStoppedError):
        await proxy.ready()
    with pytest.raises(WorkerStoppedError):
        await proxy.add(1, 2)
    await proxy.astop()
    assert {child.pid for child in _our_children()} == before
    assert _shm_names() - before_shm == set()


def test_child_side_bootstrap_refuses_to_spawn_again(monkeypatch):
    current = multiprocessing.process.current_process()
    monkeypatch.setattr(current, "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match='__name__ == "__main__"'):
        mpify(targets.Worker)


# --------------------------------------------------------------------------- numpy


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    big = rng.random((400, 600))
    readonly = rng.random(5000)
    readonly.flags.writeable = False
    structured = np.zeros(1000, dtype=[("a", "i4"), ("b", "f8")])
    structured["a"] = np.arange(1000)
    return {
        "image_uint8": rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8),
        "float32": rng.random((100, 7)).astype(np.float32),
        "fortran": np.asfortranarray(rng.random((300, 200))),
        "strided": big[::2, ::3],
        "transposed_3d": rng.integers(-9, 9, size=(20, 30, 40)).astype(np.int16).transpose(1, 0, 2),
        "bool": rng.random(10_000) > 0.5,
        "complex": rng.random((64, 64)) + 1j * rng.random((64, 64)),
        "big_endian": rng.random(2000).astype(">f8"),
        "datetime": np.arange(10_000).astype("M8[ms]"),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 3)),
        "small": np.arange(7.0),
        "readonly": readonly,
        "structured": structured,
        "objects": np.array([{"a": 1}, None, "x"], dtype=object),
    }


@pytest.mark.parametrize("name", list(_arrays()))
async def test_numpy_arrays_round_trip(proxy, name):
    array = _arrays()[name]
    back = await proxy.echo(array)
    assert back.dtype == array.dtype and back.shape == array.shape
    if array.dtype == object:
        assert back.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(back, array)
    if array.size > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
        assert back.flags.f_contiguous
    if array.dtype != object and array.size:
        assert back.flags.writeable == array.flags.writeable  # read-only stays read-only
        assert back.base is not None and not isinstance(back.base, memoryview)  # our copy
        seen = await proxy.describe(array)
        assert seen["shape"] == array.shape and seen["dtype"] == str(array.dtype)
        assert seen["c"] or seen["f"]  # non-contiguous input arrives contiguous


async def test_large_arrays_travel_out_of_band(proxy):
    before = proxy.stats  # a frozen snapshot: read it again after each call
    image = np.random.default_rng(1).integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
    back = await proxy.echo({"image": image, "q": [0.1] * 7})
    np.testing.assert_array_equal(back["image"], image)
    stats = proxy.stats
    assert stats.last_frame_sent < 1024 < image.nbytes  # only (segment, offset, length) in the pipe
    assert stats.last_frame_received < 1024
    assert stats.shm_bytes_sent - before.shm_bytes_sent >= image.nbytes
    assert stats.shm_bytes_received - before.shm_bytes_received >= image.nbytes
    assert stats.to_dict()["shm_bytes_sent"] == stats.shm_bytes_sent

    doubled = await proxy.scale(image.astype(np.float32), 2.0)  # a computed result
    np.testing.assert_allclose(doubled, image.astype(np.float32) * 2)
    assert proxy.stats.last_frame_received < 1024

    blob = os.urandom(300_000)  # no buffers, but large pickled data goes to the segment too
    assert await proxy.echo(blob) == blob
    assert proxy.stats.last_frame_sent < 1024

    shm_sent = proxy.stats.shm_bytes_sent
    assert await proxy.echo([0.5] * 7) == [0.5] * 7  # small payloads stay in the pipe
    assert proxy.stats.shm_bytes_sent == shm_sent


async def test_segments_are_reused(proxy):
    image = np.ones((224, 224, 3), dtype=np.uint8)
    await proxy.echo(image)
    created = link_of(proxy)._pool.created
    for _ in range(30):
        await proxy.echo(image)
    assert link_of(proxy)._pool.created == created


# --------------------------------------------------------------------------- start-up


def test_factory_error_is_raised_by_mpify():
    before = {child.pid for child in _our_children()}
    with pytest.raises(targets.FactoryError, match="cannot build: bad") as info:
        mpify(targets.broken_factory, "bad")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "broken_factory" in info.value.__cause__.text
    assert {child.pid for child in _our_children()} == before


async def test_ampify_with_closures_and_local_classes():
    class Local:  # not importable: cloudpickle ships it by value
        def __init__(self, k):
            self.k = k

        def mul(self, x):
            return self.k * x

    k = 3
    async with await ampify(lambda: Local(k)) as local:
        assert await local.mul(4) == 12
        assert await local.k == 3

    def failing():
        raise targets.FactoryError("closure says no")

    with pytest.raises(targets.FactoryError, match="closure says no") as info:
        await ampify(failing)
    assert "failing" in info.value.__cause__.text
    _assert_cleaned(local)


async def test_start_timeout_kills_the_child():
    started = time.monotonic()
    with pytest.raises(OffloadError, match="ready within"):
        await ampify(targets.Worker.slow, None, 30, start_timeout=0.5)
    assert time.monotonic() - started < 5


async def test_cancelling_ampify_leaves_no_child():
    before = {child.pid for child in _our_children()}
    before_shm = _shm_names()
    start = asyncio.ensure_future(ampify(targets.Worker))
    await asyncio.sleep(0.05)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        {child.pid for child in _our_children()} != before or _shm_names() - before_shm
    ):
        await asyncio.sleep(0.05)
    assert {child.pid for child in _our_children()} == before
    assert _shm_names() - before_shm == set()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="start_timeout"):
        mpify(targets.Worker, start_timeout=0)
    with pytest.raises(ValueError, match="arena_bytes"):
        mpify(targets.Worker, arena_bytes=-1)


# --------------------------------------------------------------------------- death and stop


@pytest.mark.timing
async def test_child_killed_mid_call_fails_fast():
    worker = await ampify(targets.Worker)
    try:
        task = asyncio.ensure_future(worker.slow(30, "never"))
        other = asyncio.ensure_future(worker.add(1, 2))  # queued behind it
        await asyncio.sleep(0.2)
        killed = time.monotonic()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - killed < 1.0
        with pytest.raises(WorkerCrashedError):
            await other
        with pytest.raises(WorkerCrashedError):
            await worker.add(1, 2)
        assert not worker.running
    finally:
        await worker.astop()
    with pytest.raises(WorkerStoppedError):
        await worker.add(1, 2)
    _assert_cleaned(worker)


def test_child_exit_on_the_blocking_path():
    worker = mpify(targets.Worker)
    with pytest.raises(WorkerCrashedError, match="exited with code 3"):
        worker.call_sync("exit_hard", 3)
    with pytest.raises(WorkerCrashedError):
        worker.call_sync("add", 1, 2)
    worker.stop()
    with pytest.raises(WorkerStoppedError):
        worker.call_sync("add", 1, 2)
    _assert_cleaned(worker)


async def test_astop_with_calls_pending():
    worker = await ampify(targets.Worker)
    pending = [asyncio.ensure_future(worker.slow(10)) for _ in range(3)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await worker.astop(timeout=0.3)  # the child is busy: killed after 0.3 s
    assert time.monotonic() - started < 3
    for call in pending:
        with pytest.raises(WorkerStoppedError):
            await call
    with pytest.raises(WorkerStoppedError):
        await worker.add(1, 2)
    with pytest.raises(WorkerStoppedError):
        await worker.value
    await worker.astop()
    worker.stop()
    assert not worker.running
    _assert_cleaned(worker)


async def test_stop_from_another_thread_with_calls_pending():
    worker = await ampify(targets.Worker)
    assert await worker.add(1, 2) == 3
    pending = [asyncio.ensure_future(worker.slow(10)) for _ in range(2)]
    await asyncio.sleep(0.1)
    await asyncio.to_thread(worker.stop, 0.3)
    for call in pending:
        with pytest.raises(WorkerStoppedError):
            await call
    worker.stop()  # twice is fine
    with pytest.raises(WorkerStoppedError):
        worker.call_sync("add", 1, 2)
    _assert_cleaned(worker)


@pytest.mark.timing
async def test_ampify_and_astop_do_not_block_the_loop():
    gaps: list[float] = []
    running = True

    async def ticker():
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    worker = await ampify(targets.Worker)
    assert await worker.add(2, 2) == 4
    await worker.echo(np.zeros((224, 224, 3), dtype=np.uint8))
    await worker.astop()
    running = False
    await tick
    assert len(gaps) > 50
    assert max(gaps) < 0.05, f"the loop stalled for {max(gaps) * 1000:.1f} ms"
    _assert_cleaned(worker)


# --------------------------------------------------------------------------- scripts


def _run_script(tmp_path: Path, body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\n" + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def test_unguarded_script_is_told_to_add_the_guard(tmp_path):
    started = time.monotonic()
    result = _run_script(
        tmp_path,
        """
        from aiofranka.offload import mpify
        from _process_targets import Worker

        proxy = mpify(Worker)
        print("started")
        proxy.stop()
        """,
    )
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr
    assert "started" not in result.stdout
    assert time.monotonic() - started < 30


def test_script_exits_cleanly_without_stop(tmp_path):
    result = _run_script(
        tmp_path,
        """
        import sys
        from aiofranka.offload import mpify
        from aiofranka.offload._proxy import link_of
        from _process_targets import Worker

        if __name__ == "__main__":
            proxy = mpify(Worker)
            proxy.call_sync("echo", b"x" * 100_000)
            print(proxy.pid, link_of(proxy)._token, flush=True)
            # no stop(): the exit hook stops the child
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "leaked" not in result.stderr and "Traceback" not in result.stderr
    child_pid, token = result.stdout.split()
    deadline = time.monotonic() + 5
    while not _pid_gone(int(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(int(child_pid))
    assert _shm_names(f"afk{token}") == set()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_child_exits_when_the_parent_is_killed(tmp_path, busy):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, threading, time
            sys.path.insert(0, {str(TESTS_DIR)!r})
            from aiofranka.offload import mpify
            from aiofranka.offload._proxy import link_of
            from _process_targets import Worker

            if __name__ == "__main__":
                proxy = mpify(Worker)
                proxy.call_sync("echo", b"x" * 100_000)  # segments on both sides
                if {busy!r}:
                    threading.Thread(target=proxy.call_sync, args=("slow", 60), daemon=True).start()
                    time.sleep(0.3)
                print(proxy.pid, link_of(proxy)._token, flush=True)
                time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line, "the parent script printed nothing"
        child_pid, token = int(line.split()[0]), line.split()[1]
        assert not _pid_gone(child_pid)
        assert _shm_names(f"afk{token}")
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while not _pid_gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pid_gone(child_pid), "the child outlived its parent"
        while _shm_names(f"afk{token}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _shm_names(f"afk{token}") == set()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_child_does_not_inherit_sched_fifo(tmp_path):
    result = _run_script(
        tmp_path,
        """
        import json, os, threading
        from aiofranka._os import demote_to_normal
        from aiofranka.offload import mpify
        from _process_targets import Worker

        if __name__ == "__main__":
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            except (OSError, AttributeError) as exc:
                print(json.dumps({"skip": str(exc)}))
                raise SystemExit(0)
            with mpify(Worker) as proxy:
                child = proxy.call_sync("scheduling")
            helper = {}

            def probe():  # a thread made by a FIFO thread is FIFO; the helper demotes it
                helper["before"] = os.sched_getscheduler(0)
                demote_to_normal()
                helper["after"] = os.sched_getscheduler(0)

            thread = threading.Thread(target=probe)
            thread.start()
            thread.join()
            print(json.dumps({"parent": os.sched_getscheduler(0), "child": child, "helper": helper}))
        """,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(f"SCHED_FIFO not permitted here: {report['skip']}")
    assert report["parent"] == os.SCHED_FIFO
    assert report["child"] == {"main": os.SCHED_OTHER, "thread": os.SCHED_OTHER}
    assert report["helper"] == {"before": os.SCHED_FIFO, "after": os.SCHED_OTHER}


# --------------------------------------------------------------------------- stale segments

HOLDER = textwrap.dedent(
    """
    import sys
    from aiofranka.offload import mpify
    from aiofranka.offload._proxy import link_of

    if __name__ == "__main__":
        proxy = mpify(dict)
        print(link_of(proxy)._token, flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)
        proxy.stop()
    """
)


def _holder(tmp_path: Path, name: str) -> tuple[subprocess.Popen, str]:
    """A process that holds an mpify child (segments on both sides); returns it and its token."""
    script = tmp_path / f"{name}.py"
    script.write_text(HOLDER)
    process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)  # its own group, to kill it whole
    token = process.stdout.readline().strip()
    assert token, "the holder printed nothing"
    return process, token


def _with_token(token: str) -> set[str]:
    return {name for name in _shm_names() if name.startswith(f"afk{token}")}


def test_segments_of_a_killed_process_group_are_swept_by_the_next_process(tmp_path):
    dead, dead_token = _holder(tmp_path, "dead")
    live, live_token = _holder(tmp_path, "live")
    foreign = None
    try:
        left = _with_token(dead_token)
        assert left, "the holder made no segments"
        # SIGKILL to the whole group: the holder, its mpify child and its resource
        # tracker die at once, and nothing unlinks their segments.
        os.killpg(dead.pid, signal.SIGKILL)
        dead.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until no process of that group is left
            try:
                os.killpg(dead.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        assert _with_token(dead_token) == left
        if os.getuid() == 0:  # another user's segment named as if by the dead process
            foreign = SHM / f"afk{dead_token}x-{dead.pid}"
            foreign.touch(mode=0o600)
            os.chown(foreign, 65534, 65534)
        held = _with_token(live_token)
        # The next process sweeps when it makes its first segment.
        result = _run_script(
            tmp_path,
            """
            from aiofranka.offload import mpify

            if __name__ == "__main__":
                with mpify(dict) as proxy:
                    proxy.call_sync("get", "x", None)
            """,
        )
        assert result.returncode == 0, result.stderr
        assert _with_token(dead_token) - {foreign.name if foreign else ""} == set(), "stale segments were kept"
        assert held and _with_token(live_token) == held, "a live process's segments were swept"
        if foreign is not None:
            assert foreign.exists(), "another user's segment was swept"
    finally:
        if foreign is not None:
            foreign.unlink(missing_ok=True)
        live.stdin.close()
        live.wait(30)
        live.stdout.close()
        dead.stdin.close()
        dead.stdout.close()
        if dead.poll() is None:
            os.killpg(dead.pid, signal.SIGKILL)
            dead.wait()
        for name in _with_token(dead_token):  # on a failure: leave /dev/shm as we found it
            (SHM / name).unlink(missing_ok=True)
