"""Asynchronous chunks with real-time chunking (RTC) hints.

With enable_rtc=True every request carries ``prev_action_chunk`` (the actions
the arm will execute while the policy runs, padded to the chunk length),
``inference_delay`` (the latency in steps, clamped to [1, execute_horizon])
and ``execute_horizon`` (execution_steps). An RTC policy keeps the first
``inference_delay`` actions of the previous chunk and blends into its own
over the horizon, so successive chunks agree where they overlap. Here the
policy is a stand-in with 80 ms of latency (a GIL-free sleep through
asyncify) and a random per-chunk bias that RTC smooths away. Runs against
the embedded simulator: python examples/12_policy_rtc.py
"""

import asyncio
import time

import numpy as np

from aiofranka import (Action, Command, Controller, ControllerExecutor, ControllerObserver, InferenceMode,
                       InferenceRuntime, Robot, asyncify, limits, run_step)

HZ = 30.0
CHUNK = 20
rng = np.random.default_rng(0)


@asyncify
def policy(frame, request):
    time.sleep(0.08)  # the model's latency
    start = request.due_s if request.due_s is not None else frame.meta["robot_time_ms"] / 1000.0 + 1 / HZ
    times = start + np.arange(CHUNK) / HZ
    targets = np.repeat(limits.Q_HOME[None], CHUNK, axis=0)
    targets[:, 0] += 0.15 * np.sin(2 * np.pi * 0.4 * times)
    targets += rng.normal(0.0, 0.005, size=7)  # this chunk's disagreement with the last one
    if request.rtc:
        previous = np.array([a["arm"].value for a in request.prev_action_chunk])
        d, h = request.inference_delay, request.execute_horizon
        for j in range(h):
            w = 0.0 if j < d else (j - d + 1) / (h - d + 1)
            targets[j] = (1.0 - w) * previous[j] + w * targets[j]
    return [Action({"arm": Command("joint_position", q)}) for q in targets]


async def main() -> None:
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            await controller.move(limits.Q_HOME)
            runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=HZ, steps_before_request=4,
                                       execution_steps=8, enable_rtc=True)
            observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
            for _ in range(int(4 * HZ)):
                await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
            stats = runtime.stats
            print(f"{stats.requests} requests, latency {stats.latency_steps:.2f} steps "
                  f"(inference_delay hint {runtime.scheduler.latency_hint()}), {stats.starved_ticks} starved ticks")
            print(controller.playback)


if __name__ == "__main__":
    asyncio.run(main())
