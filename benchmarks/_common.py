"""Loads and helpers the benchmarks share.

Standard library only at import (numpy and torch where used), so that a child
running under another library's venv (``benchmarks/versus.py --legacy-venv``)
can import it too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

#: The torch MLP of the L3 load: 64 -> 3 x 512 -> 7, batch 1.
MLP_SIZES = (64, 512, 512, 512, 7)


def spin_rate(seconds: float, stop: threading.Event | None = None) -> float:
    """Iterations per second of a pure-Python counting loop (L1)."""
    n = spin_count(seconds, stop)
    return n / seconds if seconds else 0.0


def spin_count(seconds: float, stop: threading.Event | None = None) -> int:
    """Iterations of a pure-Python counting loop over ``seconds`` or until ``stop`` is set."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop and stop.is_set()):
        for _ in range(1000):
            n += 1
    return n


async def blocker(kind: str = "sleep", every: float = 1.0, block: float = 0.03) -> None:
    """L2 load: block the event loop for ``block`` seconds every ``every`` seconds
    (``time.sleep``, or pure Python with ``kind="python"``)."""
    while True:
        await asyncio.sleep(every)
        if kind == "sleep":
            time.sleep(block)
        else:
            end = time.perf_counter() + block
            while time.perf_counter() < end:
                pass


def make_mlp(torch):
    """The L3 MLP (CPU, eval mode, seeded)."""
    torch.manual_seed(0)
    layers = []
    for i in range(len(MLP_SIZES) - 1):
        layers.append(torch.nn.Linear(MLP_SIZES[i], MLP_SIZES[i + 1]))
        if i < len(MLP_SIZES) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


async def paced(hz: float, seconds_or_event, call) -> int:
    """Await ``call()`` at ``hz`` (deadline grid, skipping missed ticks) until the
    event is set; returns the number of calls."""
    period = 1.0 / hz
    stop: asyncio.Event = seconds_or_event
    n = 0
    next_t = time.monotonic()
    while not stop.is_set():
        await call()
        n += 1
        next_t += period
        now = time.monotonic()
        if next_t < now:
            next_t = now + period - (now - next_t) % period
        try:
            await asyncio.wait_for(stop.wait(), next_t - now)
        except asyncio.TimeoutError:
            pass
    return n


def other_simulators() -> int:
    """Simulator servers running on this machine (another session's, another run's)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"aiofranka.sim._server" in handle.read():
                    count += 1
        except OSError:
            continue
    return count
