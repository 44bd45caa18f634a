"""A torch policy loaded from a checkpoint in a child process (mpify), beside the 1 kHz loop.

mpify(make_policy, ckpt) builds the policy in a spawned process with its own
interpreter and GIL, so nothing it runs can delay the loop. Called inside the
event loop it returns at once; the child loads the checkpoint meanwhile and the
first call waits for it. The policy adds a bounded correction (at most
0.01 rad) to a moving reference, a slow sine on joint 1, asked for at 30 Hz
for 3 s. The script first writes the checkpoint to a temporary file. Runs
against the embedded simulator (on a GPU when there is one):
python examples/08_mpify_policy.py
"""

import asyncio
import math
import os
import tempfile
import time

import numpy as np
import torch

from aiofranka import Controller, Robot, limits, mpify

RATE = 30.0  # Hz, the policy rate
DURATION = 3.0  # s of robot time
AMPLITUDE = 0.15  # rad, on joint 1
PERIOD = 2.0  # s, of the sine


def reference(t: float) -> np.ndarray:
    """The moving target: the home pose with joint 1 on a slow sine."""
    q = limits.Q_HOME.copy()
    q[0] += AMPLITUDE * math.sin(2 * math.pi * t / PERIOD)
    return q


def make_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 7))


class Policy:
    def __init__(self, net: torch.nn.Module, device: str) -> None:
        self.net, self.device = net, device
        self._last_timing = {}

    def act(self, q: np.ndarray, t: float) -> np.ndarray:
        start = time.perf_counter()
        obs = torch.tensor([*q, t], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            correction = 0.01 * torch.tanh(self.net(obs)).cpu().numpy()
        self._last_timing = {"forward_ms": 1000 * (time.perf_counter() - start)}
        return reference(t) + correction


def make_policy(ckpt: str) -> Policy:
    """Runs in the child process: load the checkpoint, return the object to serve."""
    torch.set_num_threads(1)  # leave the other cores to the loop (docs/async.md, small machines)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = make_net()
    net.load_state_dict(torch.load(ckpt, map_location=device))
    return Policy(net.to(device).eval(), device)


async def main(ckpt: str) -> None:
    policy = mpify(make_policy, ckpt)  # returns at once: the child starts in the background
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            await controller.move()  # home
            await policy.act(limits.Q_HOME, 0.0)  # waits for the child, then warms it up
            controller.set_freq(RATE)
            start_ms, calls, worst = controller.state.time_ms, 0, 0.0
            while (t := (controller.state.time_ms - start_ms) / 1000) < DURATION:
                target = await policy.act(controller.state.q, t)  # runs in the child
                await controller.set("q_desired", target)  # waits for the next 30 Hz tick
                calls += 1
                worst = max(worst, abs(controller.state.q[0] - reference(t)[0]))
            timing = await policy._last_timing  # an attribute of the remote object
            print(f"{calls} policy calls at {RATE:g} Hz in the child (pid {policy.pid}); "
                  f"joint 1 within {worst:.3f} rad of its moving target; "
                  f"last forward pass {timing['forward_ms']:.2f} ms")
        print(controller.stats.table("mpify policy"))
    await policy.astop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        ckpt = os.path.join(folder, "policy.pt")
        torch.manual_seed(0)
        torch.save(make_net().state_dict(), ckpt)  # a stand-in for a trained checkpoint
        asyncio.run(main(ckpt))
