"""Placement: the serving C thread keeps off the CPU your busy thread runs on.

A pure-Python thread spins (your policy, a data loader) while the arm holds its
pose, once with the default ``serve_cpu="auto"`` and once with
``serve_cpu=None`` (the scheduler decides). The figures show where the serving
thread ran, how often it moved, and how much of a core the busy thread got.
On a machine with a CPU to spare, "auto" leaves the busy thread (nearly) a
whole core; with None that depends on where the scheduler last woke the
serving thread, beside the busy thread or not.

Runs against the embedded simulator: python examples/18_placement.py
See docs/kernel-serving.md#placement.
"""

import asyncio
import threading
import time

from aiofranka import Controller, Robot


def spin(stop: threading.Event, result: dict) -> None:
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    n = 0
    while not stop.is_set():
        for _ in range(10_000):
            n += 1
    result["share"] = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)


async def hold_beside_a_busy_thread(robot: Robot, serve_cpu) -> None:
    stop, result = threading.Event(), {}
    async with Controller(robot, serve_cpu=serve_cpu) as controller:
        worker = threading.Thread(target=spin, args=(stop, result))
        worker.start()
        await controller.wait(3.0)
        stop.set()
        await asyncio.to_thread(worker.join)
    stats = controller.stats
    print(f"serve_cpu={serve_cpu!r}: served by {stats.serve} on CPU {stats.serve_cpu} "
          f"({stats.serve_moves} moves), {stats.lost_cycles} lost; "
          f"the busy thread got {100 * result['share']:.1f} % of a core")


async def main() -> None:
    with Robot() as robot:
        await hold_beside_a_busy_thread(robot, "auto")
        await hold_beside_a_busy_thread(robot, None)


if __name__ == "__main__":
    asyncio.run(main())
