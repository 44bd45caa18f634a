"""Run a torch chunking policy asynchronously, served by a CudaInferenceThread.

One request is always in flight while the arm executes the previous chunk.
A reply is integrated the moment it arrives: the actions for steps already
executed are dropped, and the Controller switches to the rest at a 1 kHz
cycle boundary without a jump. The runtime measures the latency in control
steps at start-up (warm-up and profiled requests, nothing executed meanwhile)
and keeps estimating it. Runs against the embedded simulator:
python examples/11_policy_async.py
"""

import asyncio

import numpy as np
import torch

from aiofranka import (Action, Command, Controller, ControllerExecutor, ControllerObserver, CudaInferenceThread,
                       InferenceMode, InferenceRuntime, Robot, limits, run_step)

torch.set_num_threads(1)  # leave the CPU to the loop (and the simulator)
HZ = 30.0
CHUNK = 20


class ChunkMLP(torch.nn.Module):
    """Joints and time in, a chunk of small joint offsets out (fixed random weights: a stand-in)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(9, 256), torch.nn.ReLU(), torch.nn.Linear(256, CHUNK * 7))

    def forward(self, x):
        return 0.01 * torch.tanh(self.net(x)).reshape(CHUNK, 7)


async def main() -> None:
    model = ChunkMLP().eval()
    async with CudaInferenceThread() as runner:

        @runner.wrap
        def policy(frame, request):
            t = frame.meta["robot_time_ms"] / 1000.0
            x = np.concatenate([frame.state["q"], [np.sin(t), np.cos(t)]]).astype(np.float32)
            with torch.inference_mode():
                offsets = model(torch.from_numpy(x)).numpy()
            times = t + np.arange(1, CHUNK + 1) / HZ
            targets = limits.Q_HOME + offsets
            targets[:, 3] += 0.1 * np.sin(2 * np.pi * 0.4 * times)
            return [Action({"arm": Command("joint_position", q)}) for q in targets]

        with Robot() as robot:  # the embedded simulator
            async with Controller(robot) as controller:
                await controller.move(limits.Q_HOME)
                runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=HZ, steps_before_request=4)
                observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
                for _ in range(int(4 * HZ)):
                    await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
                stats = runtime.stats
                print(f"{stats.integrated} chunks integrated, latency {stats.latency_steps:.2f} steps, "
                      f"{stats.stale_steps_dropped} stale steps dropped, {stats.starved_ticks} starved ticks")
                print(controller.stats.table("async policy"))


if __name__ == "__main__":
    asyncio.run(main())
