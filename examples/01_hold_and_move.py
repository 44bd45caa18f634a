"""Hold, move home, then raise the end effector 5 cm in operational space.

Runs against the embedded simulator: python examples/01_hold_and_move.py
"""

import asyncio

import numpy as np

from aiofranka import Controller, Robot, limits


async def main() -> None:
    with Robot() as robot:  # no address: start the embedded franka-sim
        async with Controller(robot) as controller:
            await controller.wait(1.0)  # hold the start pose (impedance mode)
            await controller.move(limits.Q_HOME)  # jerk-limited joint move

            controller.switch("osc")  # ee_desired is now the current pose
            target = controller.ee_desired.copy()
            target[2, 3] += 0.05  # 5 cm up, in the base frame
            controller.ee_desired = target
            await controller.wait(2.0)

            error = np.linalg.norm(controller.state.ee[:3, 3] - target[:3, 3])
            print(f"end effector within {1000 * error:.1f} mm of the target")
        # Leaving the block ramped the torque to zero and ended the session.
        print(controller.stats.table())


if __name__ == "__main__":
    asyncio.run(main())
