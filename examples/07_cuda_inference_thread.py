"""A torch model on a CudaInferenceThread, beside the 1 kHz loop.

The model lives on one dedicated thread: moved to its device there, and every
forward pass runs there, in order (with CUDA, in the thread's own stream). It
adds a bounded correction (at most 0.01 rad) to a moving reference, a slow sine
on joint 1, asked for at 30 Hz for 3 s; then the loop's figures and the model's
timing are printed. Runs against the embedded simulator (on a GPU when there is
one): python examples/07_cuda_inference_thread.py
"""

import asyncio
import math

import numpy as np
import torch

from aiofranka import Controller, CudaInferenceThread, Robot, limits

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


async def main() -> None:
    torch.set_num_threads(1)  # leave the other cores to the loop (docs/async.md, small machines)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 7)).eval()
    async with CudaInferenceThread(device=DEVICE) as runner:
        await runner.run(net.to, runner.device)  # moved on the thread that will run it

        @runner.wrap  # `await act(...)` runs on the runner's thread
        def act(q: np.ndarray, t: float) -> np.ndarray:
            obs = torch.tensor([*q, t], dtype=torch.float32, device=runner.device)
            with torch.inference_mode():
                correction = 0.01 * torch.tanh(net(obs)).cpu().numpy()
            return reference(t) + correction

        for _ in range(10):  # warm up before the loop starts
            await act(limits.Q_HOME, 0.0)
        with Robot() as robot:  # the embedded simulator
            async with Controller(robot) as controller:
                await controller.move()  # home
                controller.set_freq(RATE)
                start_ms, calls, worst = controller.state.time_ms, 0, 0.0
                while (t := (controller.state.time_ms - start_ms) / 1000) < DURATION:
                    target = await act(controller.state.q, t)
                    await controller.set("q_desired", target)  # waits for the next 30 Hz tick
                    calls += 1
                    worst = max(worst, abs(controller.state.q[0] - reference(t)[0]))
                print(f"{calls} policy calls at {RATE:g} Hz on {runner.device}; "
                      f"joint 1 within {worst:.3f} rad of its moving target")
            print(controller.stats.table("CudaInferenceThread policy"))
        print(f"forward pass on the runner: {runner.stats.run}")


if __name__ == "__main__":
    asyncio.run(main())
