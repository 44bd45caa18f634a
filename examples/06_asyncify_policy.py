"""A torch policy method made awaitable with @asyncify, beside the 1 kHz loop.

The policy is a small MLP that adds a bounded correction (at most 0.01 rad) to a
moving reference: a slow sine on joint 1. Each forward pass runs in one of
aiofranka's worker threads, so the event loop, which serves the robot, never
waits for it. The loop below asks for an action at 30 Hz (set_freq) for 3 s
and prints the loop's figures. Runs against the embedded simulator (on a GPU
when there is one): python examples/06_asyncify_policy.py
"""

import asyncio
import math

import numpy as np
import torch

from aiofranka import Controller, Robot, asyncify, limits

RATE = 30.0  # Hz, the policy rate
DURATION = 3.0  # s of robot time
AMPLITUDE = 0.15  # rad, on joint 1
PERIOD = 2.0  # s, of the sine
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(t: float) -> np.ndarray:
    """The moving target: the home pose with joint 1 on a slow sine."""
    q = limits.Q_HOME.copy()
    q[0] += AMPLITUDE * math.sin(2 * math.pi * t / PERIOD)
    return q


class Policy:
    def __init__(self, device: str) -> None:
        torch.manual_seed(0)
        self.device = device
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 7)
        ).to(device).eval()

    @asyncify  # `await policy.act(...)` runs it in a worker thread; policy.act.sync(...) runs it here
    def act(self, q: np.ndarray, t: float) -> np.ndarray:
        obs = torch.tensor([*q, t], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            correction = 0.01 * torch.tanh(self.net(obs)).cpu().numpy()
        return reference(t) + correction


async def main() -> None:
    torch.set_num_threads(1)  # leave the other cores to the loop (docs/async.md, small machines)
    policy = Policy(DEVICE)
    await policy.act(limits.Q_HOME, 0.0)  # warm up (and start the worker threads) before the loop
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            await controller.move()  # home
            controller.set_freq(RATE)
            start_ms, calls, worst = controller.state.time_ms, 0, 0.0
            while (t := (controller.state.time_ms - start_ms) / 1000) < DURATION:
                target = await policy.act(controller.state.q, t)
                await controller.set("q_desired", target)  # waits for the next 30 Hz tick
                calls += 1
                worst = max(worst, abs(controller.state.q[0] - reference(t)[0]))
            print(f"{calls} policy calls at {RATE:g} Hz on {DEVICE}; "
                  f"joint 1 within {worst:.3f} rad of its moving target")
        print(controller.stats.table("asyncify policy"))


if __name__ == "__main__":
    asyncio.run(main())
