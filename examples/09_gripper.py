"""Hold the arm, home the gripper, grasp a virtual object, print the result and the loop's figures.

The gripper's blocking libfranka calls run in a child process of their own, so the 1 kHz
loop keeps the arm fed while the fingers move. Runs against the embedded simulator, with a
virtual object 4 cm wide between the fingers: python examples/09_gripper.py
"""

import asyncio
import time

from aiofranka import Controller, Robot


async def main() -> None:
    with Robot(gripper=True, sim={"gripper_object_width": 0.04}) as robot:
        async with Controller(robot) as controller:  # holds the start pose
            gripper = robot.gripper  # starts on its first command, beside the running loop
            await gripper.homing()
            began = time.monotonic()
            held = await gripper.grasp(0.04, speed=0.05, force=20.0)  # a miss returns False
            state = gripper.state  # read from shared memory: never blocks
            print(f"grasp {'held the object' if held else 'missed'} in {time.monotonic() - began:.1f} s: "
                  f"width {1000 * state.width:.1f} mm, is_grasped {state.is_grasped}")
            await controller.wait(0.5)
            await gripper.move(0.08, speed=0.1)  # open again
        print(controller.stats.table())
    # Leaving the Robot block closed the gripper's process and the simulator.


if __name__ == "__main__":
    asyncio.run(main())
