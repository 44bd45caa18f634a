"""Kernel serving: a C thread serves every cycle, so a blocked event loop costs the arm nothing.

The same half-second block of the event loop, once with the default
(``serve="auto"``: the kernel serves) and once with ``serve="loop"`` (the
event loop serves; the guardian steps in while it is blocked). Both survive;
the figures show who served the cycles and what each design cost.

Runs against the embedded simulator: python examples/17_kernel_serving.py
See docs/kernel-serving.md.
"""

import asyncio
import time

import numpy as np

from aiofranka import Controller, Robot


async def hold_through_a_block(robot: Robot, serve: str) -> None:
    async with Controller(robot, serve=serve) as controller:
        start = controller.state.q.copy()
        target = start.copy()
        target[0] += 0.1
        controller.q_desired = target  # pushed to the kernel at once when it serves
        await controller.wait(0.5)
        time.sleep(0.5)  # a blocking call on the event loop: 500 robot cycles with no Python
        await controller.wait(0.5)
        error = float(np.max(np.abs(controller.state.q - target)))
    stats = controller.stats
    print(f"serve={serve!r}: served by {stats.serve}, {stats.cycles} cycles, {stats.lost_cycles} lost; "
          f"kernel {stats.kernel_cycles}, guardian {stats.guardian_cycles}, rescue {stats.rescued_cycles}; "
          f"joint 1 within {1000 * error:.1f} mrad of its target")


async def main() -> None:
    with Robot() as robot:
        await hold_through_a_block(robot, "auto")
        await hold_through_a_block(robot, "loop")


if __name__ == "__main__":
    asyncio.run(main())
