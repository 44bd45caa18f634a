"""Stream joint targets at a policy rate (30 Hz) while the loop runs at 1 kHz.

With set_freq(30), controller.set() returns on a fixed 30 Hz grid of the robot
clock, so the loop below needs no sleep of its own. Runs against the embedded
simulator: python examples/02_policy_rate.py
"""

import asyncio
import math

from aiofranka import Controller, Robot, limits

RATE = 30.0  # Hz, the "policy" rate
AMPLITUDE = 0.15  # rad, on joint 1
PERIOD = 1.5  # s, of the sinusoid
DURATION = 3.0  # s


async def main() -> None:
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            await controller.move(limits.Q_HOME)
            controller.set_freq(RATE)
            start_ms = controller.state.time_ms
            steps = int(DURATION * RATE)
            for k in range(steps):
                q = limits.Q_HOME.copy()
                q[0] += AMPLITUDE * math.sin(2 * math.pi * (k / RATE) / PERIOD)
                await controller.set("q_desired", q)  # waits for the next 30 Hz tick
            elapsed = (controller.state.time_ms - start_ms) / 1000.0
            print(f"{steps} targets in {elapsed:.2f} s of robot time")
        print(controller.stats.table("30 Hz targets"))


if __name__ == "__main__":
    asyncio.run(main())
