"""Round trip of a remote policy call beside mpify and a bare grpc.aio call of the same bytes.

Three ways to call one object in another process, in one run, alternated in blocks:

* ``remote``: ``await proxy.method(x)`` on a :func:`aiofranka.remote.connect_policy` proxy, the
  object served by ``aiofranka serve`` in a child process (typed encoding, token checked);
* ``mpify``: ``await proxy.method(x)`` on an ``ampify`` proxy (a spawned child, shared memory);
* ``bare gRPC``: a grpc.aio unary call to a child's generic handler that answers at once, sending
  exactly as many bytes as the remote request and replying with as many as the remote reply:
  the floor the remote proxy is held to (the issue's target: within 1.5x).

Payloads: ``7 floats`` (a float64 (7,) array there and back) and ``image -> 7 floats`` (a
224x224x3 uint8 image there, a float64 (7,) array back: a policy call).

Usage::

    python benchmarks/remote.py [--calls 2000] [--block 100]

No simulator. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.abspath(__file__)
TOKEN = "benchmark-token-0123456789"
ACTION = np.array([0.0, -0.1, 0.2, -1.5, 0.0, 1.6, 0.8])


class BenchTarget:
    """The object served (remote) and run in the child (mpify)."""

    def step(self, q):
        return q

    def act(self, image):
        return ACTION


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare_server(port: int) -> None:
    """A grpc server like ``aiofranka serve``'s (same pool, same options), answering with N bytes at once;
    N is the request's first 4 bytes."""
    import concurrent.futures
    import signal
    import threading

    import grpc

    from aiofranka.remote._protocol import MAX_MESSAGE_BYTES, channel_options

    def answer(request: bytes, context) -> bytes:
        return bytes(int.from_bytes(request[:4], "little"))

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(8),
                         options=channel_options(MAX_MESSAGE_BYTES) + [("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Bare", {"Call": grpc.unary_unary_rpc_method_handler(answer)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


def _spawn(argv: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, AIOFRANKA_TOKEN=TOKEN))
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{argv} did not start")
    return process


def _summary(samples: list[int]) -> tuple[float, float]:
    us = np.asarray(samples) / 1000.0
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


async def measure(calls: int, block: int) -> dict:
    import grpc

    from aiofranka import ampify
    from aiofranka.remote import connect_policy
    from aiofranka.remote._codec import encode, encode_call
    from aiofranka.remote._protocol import HEADER, MAX_MESSAGE_BYTES, channel_options

    remote_port, bare_port = _free_port(), _free_port()
    served = _spawn(["-m", "aiofranka.cli", "serve", f"{HERE}:BenchTarget", "--port", str(remote_port)])
    bare = _spawn([HERE, "--bare-server", str(bare_port)])
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    payloads = {"7 floats": ("step", ACTION.copy()), "image -> 7 floats": ("act", image)}
    try:
        remote = await connect_policy(f"127.0.0.1:{remote_port}", token=TOKEN, deadline=5.0)
        local = await ampify(BenchTarget)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}", options=channel_options(MAX_MESSAGE_BYTES))
        bare_call = channel.unary_unary("/bench.Bare/Call")
        results = {}
        for label, (method, value) in payloads.items():
            # The bare call carries the remote call's exact sizes: its request, and its reply.
            request_bytes = 1 + len(encode_call(method, (value,), {}))
            reply_bytes = HEADER.size + len(encode(ACTION))
            bare_body = reply_bytes.to_bytes(4, "little") + bytes(request_bytes - 4)
            metadata = (("authorization", "Bearer " + TOKEN),)

            async def via_remote():
                return await getattr(remote, method)(value)

            async def via_mpify():
                return await getattr(local, method)(value)

            async def via_bare():
                return await bare_call(bare_body, timeout=5.0, metadata=metadata)

            ways = {"remote": via_remote, "mpify": via_mpify, "bare gRPC": via_bare}
            samples = {name: [] for name in ways}
            for way in ways.values():  # warm-up
                for _ in range(50):
                    await way()
            rounds = max(1, calls // block)
            for index in range(rounds):
                order = list(ways.items())
                order = order[index % 3:] + order[:index % 3]  # rotate who goes first
                for name, way in order:
                    bucket = samples[name]
                    for _ in range(block):
                        start = time.perf_counter_ns()
                        await way()
                        bucket.append(time.perf_counter_ns() - start)
                print(f"\r{label}: round {index + 1}/{rounds}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            results[label] = ({name: _summary(values) for name, values in samples.items()},
                              request_bytes, reply_bytes, remote.stats)
        await remote.aclose()
        await local.astop()
        await channel.close()
    finally:
        for process in (served, bare):
            process.terminate()
            process.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per way and payload (default 2000)")
    parser.add_argument("--block", type=int, default=100, help="calls per block before the next way (default 100)")
    parser.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server is not None:
        bare_server(args.bare_server)
        return
    results = asyncio.run(measure(args.calls, args.block))
    print(f"\nround trip, µs (p50 / p99), {args.calls} calls per way, alternated in blocks of {args.block}")
    print(f"{'payload':<20} {'bytes out/back':>15} {'remote':>17} {'mpify':>17} {'bare gRPC':>17} "
          f"{'remote/bare p50':>16} {'p99':>6}")
    for label, (figures, out_bytes, back_bytes, _) in results.items():
        cells = "".join(f"{f'{p50:.0f} / {p99:.0f}':>17} " for p50, p99 in
                        (figures[name] for name in ("remote", "mpify", "bare gRPC")))
        ratio50 = figures["remote"][0] / figures["bare gRPC"][0]
        ratio99 = figures["remote"][1] / figures["bare gRPC"][1]
        print(f"{label:<20} {f'{out_bytes}/{back_bytes}':>15} {cells}{ratio50:>16.2f} {ratio99:>6.2f}")
    for label, (_, _, _, stats) in results.items():
        print(f"\nthe remote proxy's own figures (all its calls up to the end of '{label}'):\n{stats.table()}")


if __name__ == "__main__":
    main()
