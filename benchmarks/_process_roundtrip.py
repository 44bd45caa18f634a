"""Round-trip latency of an mpify proxy beside a bare ``multiprocessing.Pipe`` child.

Run ``python benchmarks/_process_roundtrip.py [n]``. Payloads:

* ``7 floats``: a list of 7 floats goes to the child, 7 floats come back;
* ``obs -> action``: a dict with a 224x224x3 uint8 image and 7 joint positions goes to the
  child, 7 floats come back (a policy call);
* ``obs echo``: the same dict goes to the child and comes back (the image both ways).

The bare baseline is a spawned child that answers ``conn.recv()`` with ``conn.send()``
(default pickling, everything through the pipe), timed with blocking calls. The proxy is
timed through ``await proxy.method(...)`` on the default asyncio loop and through
``proxy.call_sync``. All three run side by side, interleaved in blocks.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time

import numpy as np

ACTION = [0.0, -0.1, 0.2, -1.5, 0.0, 1.6, 0.8]


class BenchTarget:
    """The child-side object the proxy calls."""

    def step(self, q):
        return q

    def act(self, obs):
        return ACTION

    def echo(self, obs):
        return obs


def _pipe_child(conn) -> None:
    while True:
        try:
            op, payload = conn.recv()
        except EOFError:
            return
        if op == "stop":
            return
        conn.send(ACTION if op == "act" else payload)


def _observation() -> dict:
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8),
        "q": [0.1, -0.2, 0.3, -1.8, 0.0, 1.7, 0.7],
    }


def _summary(samples_ns: list[int]) -> tuple[float, float]:
    us = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def measure(n: int = 2000, rounds: int = 10) -> dict[str, dict[str, tuple[float, float]]]:
    """Return ``{mechanism: {payload: (p50_us, p99_us)}}``.

    The mechanisms run side by side and are interleaved in ``rounds`` blocks, so a noisy
    neighbour on the machine affects them alike.
    """
    from aiofranka.offload import mpify

    obs = _observation()
    payloads = {
        "7 floats": ("step", [0.1, -0.2, 0.3, -1.8, 0.0, 1.7, 0.7]),
        "obs -> action": ("act", obs),
        "obs echo": ("echo", obs),
    }
    mechanisms = ("bare Pipe (sync)", "mpify await", "mpify call_sync")
    samples: dict[str, dict[str, list[int]]] = {m: {p: [] for p in payloads} for m in mechanisms}
    per_block = max(1, n // rounds)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_pipe_child, args=(child,), name="bare-pipe-child")
    process.start()
    child.close()
    proxy = mpify(BenchTarget)
    loop = asyncio.new_event_loop()

    def bare(op, payload, count, out):
        for _ in range(count):
            t0 = time.perf_counter_ns()
            parent.send((op, payload))
            parent.recv()
            out.append(time.perf_counter_ns() - t0)

    async def awaited(op, payload, count, out):
        method = getattr(proxy, op)
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await method(payload)
            out.append(time.perf_counter_ns() - t0)

    def blocking(op, payload, count, out):
        for _ in range(count):
            t0 = time.perf_counter_ns()
            proxy.call_sync(op, payload)
            out.append(time.perf_counter_ns() - t0)

    try:
        for label, (op, payload) in payloads.items():  # warm-up (segments, caches)
            bare(op, payload, 50, [])
            loop.run_until_complete(awaited(op, payload, 50, []))
            blocking(op, payload, 50, [])
        for _ in range(rounds):
            for label, (op, payload) in payloads.items():
                bare(op, payload, per_block, samples["bare Pipe (sync)"][label])
                loop.run_until_complete(awaited(op, payload, per_block, samples["mpify await"][label]))
                blocking(op, payload, per_block, samples["mpify call_sync"][label])
        parent.send(("stop", None))
    finally:
        proxy.stop()
        loop.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()
    return {m: {p: _summary(v) for p, v in row.items()} for m, row in samples.items()}


def _print(results: dict) -> None:
    labels = list(next(iter(results.values())))
    print(f"{'mechanism':<18}" + "".join(f"{label + ' p50/p99 us':>28}" for label in labels))
    for mechanism, row in results.items():
        cells = "".join(f"{row[label][0]:>18.0f} / {row[label][1]:<7.0f}" for label in labels)
        print(f"{mechanism:<18}{cells}")


if __name__ == "__main__":
    _print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
