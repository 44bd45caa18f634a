"""Record a policy's episode in the LeRobot dataset layout, read it back, and replay it on the arm.

A chunking policy (the reference motion of examples 12: joint 1 on a sine, joint 4 on a
bump) runs at 30 Hz for 3 s with a synthetic wrist camera; each step's frame and the
action it executed go to an EpisodeWriter (a writer thread: the event loop never waits for
the disk). The dataset (LeRobot v3.0: parquet, PNG images) is read back with pyarrow,
then its actions are fed through the policy runtime again and the replayed joints are
compared with the recorded ones. Runs against the embedded simulator:
python examples/15_episodes.py [folder]
"""

import asyncio
import sys
import tempfile

import numpy as np

from aiofranka import (Action, Command, Controller, ControllerExecutor, ControllerObserver, InferenceMode,
                       InferenceRuntime, Robot, run_step)
from aiofranka.policy.episodes import EpisodeWriter, load_episode, read_info, replay

HZ = 30.0
CHUNK = 10
SECONDS = 3.0


class ReferencePolicy:
    """Chunks of a smooth reference about the start pose, for the steps they are for."""

    def __init__(self, q0):
        self.q0 = np.asarray(q0, dtype=float)

    def __call__(self, frame, request):
        chunk = []
        for j in range(CHUNK):
            t = (request.request_step + j) / HZ
            q = self.q0.copy()
            q[0] += 0.15 * np.sin(2 * np.pi * 0.4 * t)
            q[3] += 0.08 * (1 - np.cos(2 * np.pi * 0.4 * t))
            chunk.append(Action({"arm": Command("joint_position", q)}))
        return chunk


class Camera:
    """A stand-in camera: a moving bar on a 64x48 image."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, self.count % 64, :] = 255
        return image


async def main(folder: str) -> None:
    with Robot() as robot:  # the embedded simulator
        async with Controller(robot) as controller:
            policy = ReferencePolicy(controller.state.q)
            observer = ControllerObserver(controller, cameras={"wrist": Camera()})
            executor = ControllerExecutor(controller)
            runtime = InferenceRuntime(mode=InferenceMode.ASYNC, control_hz=HZ, steps_before_request=2)
            async with EpisodeWriter(folder, fps=HZ, task="wave", overwrite=True) as episodes:
                for _ in range(int(SECONDS * HZ)):
                    episodes.add(await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy,
                                                runtime=runtime))
                episodes.end_episode()
            runtime.close()
            print(f"recorded: {episodes.stats}")
            info = read_info(folder)
            print(f"{folder}: LeRobot {info['codebase_version']}, {info['total_episodes']} episode, "
                  f"{info['total_frames']} frames at {info['fps']:g} fps, features {sorted(info['features'])}")
            episode = load_episode(folder, 0)
            report = await replay(episode, controller, chunk=CHUNK)
            print(report.table())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(main(folder + "/episodes"))
