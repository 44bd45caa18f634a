"""Run a chunked policy synchronously: request, execute the chunk at 1 kHz, request again.

The policy returns 10 joint targets for the next 10 control steps (30 Hz).
In SYNC mode the runtime asks for a chunk, the Controller executor plays it
through 1 kHz rows (no step in the target at any raw step), and the next
request leaves when the chunk is done; the arm holds while the policy runs.
Runs against the embedded simulator: python examples/10_policy_sync.py
"""

import asyncio

import numpy as np

from aiofranka import (Action, Command, Controller, ControllerExecutor, ControllerObserver, InferenceMode,
                       InferenceRuntime, Robot, limits, run_step)

HZ = 30.0
CHUNK = 10


def policy(frame, request):
    """Swing joint 1 about home, as a function of the robot clock in the frame."""
    t = frame.meta["robot_time_ms"] / 1000.0 + np.arange(1, CHUNK + 1) / HZ
    targets = np.repeat(limits.Q_HOME[None], CHUNK, axis=0)
    targets[:, 0] += 0.15 * np.sin(2 * np.pi * 0.5 * t)
    return [Action({"arm": Command("joint_position", q)}) for q in targets]


async def main() -> None:
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            await controller.move(limits.Q_HOME)
            runtime = InferenceRuntime(mode=InferenceMode.SYNC, control_hz=HZ)
            observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
            for _ in range(int(3 * HZ)):  # 3 s; each step ends on the next 30 Hz tick of the robot clock
                await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
            print(runtime.stats)
            print(controller.playback)


if __name__ == "__main__":
    asyncio.run(main())
