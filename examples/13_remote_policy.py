"""A chunking torch policy behind `aiofranka serve`, driving the simulated arm through connect_policy.

The policy lives in another process (on a real setup: another machine, the GPU box) and is
reached over gRPC. By default this script starts the server itself, on loopback with a fresh
token, then runs the arm for 4 s at 30 Hz with one request always in flight. To run the two
halves yourself (the server first):

    AIOFRANKA_TOKEN=secret aiofranka serve examples/13_remote_policy.py:make_policy --port 50051
    AIOFRANKA_TOKEN=secret python examples/13_remote_policy.py --connect 127.0.0.1:50051

Beyond loopback the server needs --tls-cert/--tls-key and the client tls_ca (docs/remote.md).
"""

import argparse
import asyncio
import os
import secrets
import subprocess
import sys

import numpy as np

from aiofranka import limits  # light: `import aiofranka` loads no torch, pylibfranka or simulator

HZ = 30.0
CHUNK = 20


class ChunkPolicy:
    """Joints and time in, a chunk of joint targets out: a slow sine on joint 4 plus a small
    learned-looking correction (a fixed random torch MLP: a stand-in for a real model)."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # this example shares the CPU with the arm's loop and the simulator
        torch.manual_seed(0)
        self.torch = torch
        self.net = torch.nn.Sequential(torch.nn.Linear(9, 256), torch.nn.ReLU(),
                                       torch.nn.Linear(256, CHUNK * 7)).eval()
        self.t0_ms = None

    def infer(self, frame, request):
        from aiofranka.policy import Action, Command

        if self.t0_ms is None:
            self.t0_ms = frame.meta["robot_time_ms"]
        t = (frame.meta["robot_time_ms"] - self.t0_ms) / 1000.0
        x = np.concatenate([frame.state["q"], [np.sin(t), np.cos(t)]]).astype(np.float32)
        with self.torch.inference_mode():
            offsets = 0.01 * self.torch.tanh(self.net(self.torch.from_numpy(x))).reshape(CHUNK, 7).numpy()
        times = t + np.arange(1, CHUNK + 1) / HZ
        targets = limits.Q_HOME + offsets * np.clip(times, 0.0, 1.0)[:, None]  # starts at home: no jump
        targets[:, 3] += 0.1 * np.sin(2 * np.pi * 0.4 * times)
        return [Action({"arm": Command("joint_position", q)}) for q in targets]


def make_policy() -> ChunkPolicy:
    """What `aiofranka serve examples/13_remote_policy.py:make_policy` builds (on the server)."""
    return ChunkPolicy()


def start_server(token: str) -> tuple[subprocess.Popen, str]:
    """`aiofranka serve` for this file's make_policy on a free loopback port; its address once it serves."""
    factory = f"{os.path.abspath(__file__)}:make_policy"
    server = subprocess.Popen([sys.executable, "-m", "aiofranka.cli", "serve", factory, "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, AIOFRANKA_TOKEN=token))
    line = server.stdout.readline()  # "aiofranka serve: ... on 127.0.0.1:PORT (...)"
    if not line.startswith("aiofranka serve:"):
        server.kill()
        raise SystemExit(f"the policy server did not start: {line!r}")
    return server, line.split(" on ")[1].split()[0]


async def main(target: str | None) -> None:
    from aiofranka import (Controller, ControllerExecutor, ControllerObserver, InferenceMode, InferenceRuntime, Robot,
                           run_step)
    from aiofranka.remote import connect_policy

    server = None
    token = os.environ.get("AIOFRANKA_TOKEN")
    if target is None:
        token = secrets.token_urlsafe(24)
        server, target = await asyncio.to_thread(start_server, token)
    try:
        async with await connect_policy(target, token=token, deadline=1.0, connect_timeout=30.0) as policy:
            with Robot() as robot:  # the embedded simulator
                async with Controller(robot) as controller:
                    await controller.move(limits.Q_HOME)
                    runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=HZ, steps_before_request=4)
                    observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
                    for _ in range(int(4 * HZ)):
                        await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy.infer, runtime=runtime)
                    stats = runtime.stats
                    print(f"{stats.integrated} chunks from {target}, latency {stats.latency_steps:.2f} steps, "
                          f"{stats.starved_ticks} starved ticks, {stats.missed_replies} missed replies")
                    print(policy.stats.table(f"remote policy at {target}"))
                    print(controller.stats.table("remote policy"))
    finally:
        if server is not None:
            server.terminate()
            await asyncio.to_thread(server.wait, 10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="run the simulated arm with a policy behind `aiofranka serve`")
    parser.add_argument("--connect", metavar="HOST:PORT", default=None,
                        help="a running server (token from $AIOFRANKA_TOKEN); default: start one here")
    asyncio.run(main(parser.parse_args().connect))
