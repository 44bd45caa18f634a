"""Helpers shared by tests/test_to_thread.py and tests/test_cuda.py (the thread offload helpers)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from aiofranka.offload import stop_asyncify_pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every thread a test starts must be gone after it (the shared asyncify pool is stopped).

    Autouse in every test module that imports it."""
    before = set(threading.enumerate())
    yield
    stop_asyncify_pool(wait=True)
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


def add(a: int, b: int = 2, *, scale: float = 1.0) -> float:
    """Add and scale."""
    return (a + b) * scale


def boom(x: int) -> None:
    raise ValueError(f"bad value {x}")
