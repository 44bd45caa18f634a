"""torch's intra-op thread count in offload threads, and what it costs beside the loop.

``torch.set_num_threads(n)`` reaches OpenMP for the calling thread only; in
any other thread torch runs on OpenMP's default team (one thread per CPU)
whose idle members spin between operators. aiofranka's offload threads apply
``torch.get_num_threads()`` to themselves before each call. This script
measures, in one run:

1. the CPU a one-thread forward pass costs in a fresh thread, as it comes and
   after the count was applied there (process CPU seconds per wall second, and
   the threads the process holds meanwhile);
2. the MLP's round trip through ``CudaInferenceThread`` beside a running
   Controller on the embedded simulator, as a multiple of its latency with no
   Controller, for the helper as shipped and for a runner whose thread keeps
   OpenMP's default team (the behaviour before the fix), with the rescue
   thread on and off, alternated.

Usage: ``python benchmarks/torch_threads.py [--seconds 8] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
for _path in (TESTS, HERE):  # tests/_policies.py (the MLP), benchmarks/offload.py (time_mlp)
    if _path not in sys.path:
        sys.path.insert(0, _path)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def forward_cost(torch, model, x, apply_count: bool, seconds: float) -> tuple[float, int, int]:
    """In a fresh thread: (process CPU s per wall s, threads of the process, forwards)."""
    from aiofranka.offload import to_thread

    out: list = []

    def work() -> None:
        if apply_count:
            to_thread._follow_torch_threads()
        with torch.inference_mode():
            model(x)  # the OpenMP team, if any, exists from here on
            cpu0, wall0, n = time.process_time(), time.perf_counter(), 0
            while time.perf_counter() - wall0 < seconds:
                model(x)
                n += 1
            out.append(((time.process_time() - cpu0) / (time.perf_counter() - wall0),
                        len(os.listdir("/proc/self/task")), n))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return out[0]


async def mlp_ratio(robot, infer, q, seconds: float, rescue: bool, alone_p50: float) -> tuple[float, float, object]:
    from aiofranka import Controller
    from offload import time_mlp

    controller = Controller(robot, rescue=rescue)
    await controller.start()
    try:
        trips, _ = await time_mlp(infer, q, seconds)
    finally:
        stats = controller.stats
        await controller.stop()
        await controller.close()
    p50 = float(np.median(trips)) / 1000.0
    return p50, p50 / alone_p50, stats


async def inflation(args, torch, model) -> list[tuple]:
    from aiofranka import CudaInferenceThread, Robot, limits
    from aiofranka.offload import cuda
    from offload import time_mlp

    x = torch.zeros(1, 64)

    def forward(q):
        with torch.inference_mode():
            x[0, :7] = torch.from_numpy(np.asarray(q, dtype=np.float32))
            return model(x)[0].numpy().astype(np.float64), 0

    rows = []
    q = np.asarray(limits.Q_HOME, dtype=np.float64)
    real_follow = cuda._follow_torch_threads  # the runner looks it up in its own module
    with Robot() as robot:
        for rnd in range(args.rounds):
            for kind in ("shipped", "default team"):
                # The runner's thread applies the count on its first call; for
                # the "default team" runner that step is skipped, as before the fix.
                if kind == "default team":
                    cuda._follow_torch_threads = lambda: None
                try:
                    async with CudaInferenceThread(name=f"mlp-{kind}") as runner:
                        infer = runner.wrap(forward)
                        await time_mlp(infer, q, 0.5)  # warm, and the team (if any) is made
                        progress(f"round {rnd + 1}/{args.rounds}: {kind} runner, alone ({args.seconds:g} s)")
                        alone, _ = await time_mlp(infer, q, args.seconds)
                        alone_p50 = float(np.median(alone)) / 1000.0
                        for rescue in (True, False):
                            progress(f"round {rnd + 1}/{args.rounds}: {kind} runner, Controller with "
                                     f"rescue={rescue} ({args.seconds:g} s)")
                            p50, ratio, stats = await mlp_ratio(robot, infer, q, args.seconds, rescue, alone_p50)
                            rows.append((rnd + 1, kind, rescue, alone_p50, p50, ratio, stats))
                finally:
                    cuda._follow_torch_threads = real_follow
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds in part 2 (default 2)")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import torch
    from _policies import make_mlp

    torch.set_num_threads(1)
    model = make_mlp()
    x = torch.zeros(1, 64)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; torch.set_num_threads(1) in the main thread")
    print()
    print("1. A one-thread MLP forward in a fresh thread (2 s each)")
    print(f"   {'thread':<40} {'CPU s / wall s':>15} {'process threads':>16} {'forwards/s':>11}")
    for label, apply in (("as it comes (OpenMP's default team)", False), ("after applying torch's count", True)):
        progress(f"part 1: {label}")
        cpu, count, n = forward_cost(torch, model, x, apply, 2.0)
        print(f"   {label:<40} {cpu:>15.2f} {count:>16} {n / 2.0:>11.0f}")
    print()
    rows = asyncio.run(inflation(args, torch, model))
    print(f"2. MLP round trip through CudaInferenceThread beside a Controller on the simulator "
          f"({args.seconds:g} s each), p50")
    print(f"   {'round':>5} {'runner':<13} {'rescue':<7} {'alone µs':>9} {'beside µs':>10} {'ratio':>6} "
          f"{'lost':>5} {'rescued':>8}")
    for rnd, kind, rescue, alone, p50, ratio, stats in rows:
        print(f"   {rnd:>5} {kind:<13} {'on' if rescue else 'off':<7} {alone:>9.0f} {p50:>10.0f} {ratio:>5.2f}x "
              f"{stats.lost_cycles:>5} {stats.rescued_cycles:>8}")
    print()
    for kind in ("shipped", "default team"):
        ratios = [r[5] for r in rows if r[1] == kind]
        print(f"* {kind} runner: ratio {min(ratios):.2f}x to {max(ratios):.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
