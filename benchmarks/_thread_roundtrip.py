"""Round trip of one offloaded call, event loop -> thread -> event loop.

Compares, on the default asyncio loop, with a tiny payload (an int) and with a
dict holding a 224x224x3 uint8 image (threads share memory: the image is
passed by reference, so it should cost the same):

* ``run_in_executor``: ``loop.run_in_executor(None, f, payload)``
* ``bare thread``: one dedicated thread fed by a ``queue.SimpleQueue`` that
  answers with ``loop.call_soon_threadsafe`` (the floor for any helper)
* ``asyncify``: :func:`aiofranka.offload.asyncify`
* ``CudaInferenceThread.run``: :class:`aiofranka.offload.CudaInferenceThread`

Usage: ``python benchmarks/_thread_roundtrip.py [-n 3000]``; ``measure(n)``
returns ``{(mechanism, payload): (p50_us, p99_us)}``.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
import time
from typing import Any, Awaitable, Callable

import numpy as np

from aiofranka.offload import CudaInferenceThread, asyncify, stop_asyncify_pool


def echo(payload: Any) -> Any:
    return payload


class BareThread:
    """A dedicated thread + SimpleQueue + call_soon_threadsafe: the minimal mechanism."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="bench-bare", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, fn, arg = item
            loop.call_soon_threadsafe(future.set_result, fn(arg))

    def run(self, fn: Callable[[Any], Any], arg: Any) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, arg))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()


async def _time_calls(call: Callable[[Any], Awaitable[Any]], payload: Any, out: np.ndarray) -> None:
    clock = time.perf_counter_ns
    for i in range(out.size):
        t0 = clock()
        await call(payload)
        out[i] = clock() - t0


async def _measure(n: int) -> dict[tuple[str, str], tuple[float, float]]:
    loop = asyncio.get_running_loop()
    payloads = {
        "tiny": 7,
        "224x224x3 image": {"image": np.zeros((224, 224, 3), dtype=np.uint8), "t": 0.0},
    }
    bare = BareThread()
    runner = CudaInferenceThread(name="bench-inference")
    await runner.astart()
    wrapped = asyncify(echo)
    mechanisms: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "run_in_executor": lambda p: loop.run_in_executor(None, echo, p),
        "bare thread": lambda p: bare.run(echo, p),
        "asyncify": wrapped,
        "CudaInferenceThread.run": lambda p: runner.run(echo, p),
    }
    rounds = 10  # interleave the mechanisms so that load drift hits them alike
    per_round = max(1, n // rounds)
    samples = {(name, p): np.empty(per_round * rounds, dtype=np.int64) for p in payloads for name in mechanisms}
    warm = np.empty(200, dtype=np.int64)
    results: dict[tuple[str, str], tuple[float, float]] = {}
    try:
        for name, call in mechanisms.items():
            await _time_calls(call, payloads["tiny"], warm)
        for r in range(rounds):
            for payload_name, payload in payloads.items():
                for name, call in mechanisms.items():
                    chunk = samples[(name, payload_name)][r * per_round:(r + 1) * per_round]
                    await _time_calls(call, payload, chunk)
        for key, values in samples.items():
            p50, p99 = np.percentile(values, [50, 99]) / 1000.0
            results[key] = (float(p50), float(p99))
    finally:
        bare.stop()
        await runner.astop()
        stop_asyncify_pool()
    return results


def measure(n: int = 3000) -> dict[tuple[str, str], tuple[float, float]]:
    """p50/p99 round trips in µs, keyed by (mechanism, payload)."""
    return asyncio.run(_measure(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="calls per mechanism and payload")
    args = parser.parse_args()
    results = measure(args.n)
    print(f"{'mechanism':<26} {'payload':<17} {'p50 us':>8} {'p99 us':>8}")
    for (name, payload), (p50, p99) in results.items():
        print(f"{name:<26} {payload:<17} {p50:>8.1f} {p99:>8.1f}")


if __name__ == "__main__":
    main()
