"""A plain, thread-based policy loop: aiofranka.run at 50 Hz for 2 s.

The robot is a tiny stand-in (a point mass on a line, integrated in act) so
that the example runs anywhere, with no simulator: anything with observe(),
act(action) and reset() can be driven the same way. Run it with
python examples/03_session.py
"""

import numpy as np

import aiofranka

RATE = 50.0  # Hz
DURATION = 2.0  # s
TARGET = 0.3  # m


class PointMass:
    """A 1-D point mass: observe() gives position and velocity, act() applies a force for one period."""

    def __init__(self, dt: float) -> None:
        self.dt = dt
        self.x = np.zeros(1)
        self.v = np.zeros(1)

    def reset(self) -> None:
        self.x[:] = 0.0
        self.v[:] = 0.0

    def observe(self) -> dict:
        return {"x": self.x.copy(), "v": self.v.copy()}

    def act(self, force: np.ndarray) -> None:
        self.v += force * self.dt  # unit mass
        self.x += self.v * self.dt


def policy(obs: dict) -> np.ndarray:
    """A PD law towards TARGET."""
    return 40.0 * (TARGET - obs["x"]) - 10.0 * obs["v"]


def main() -> None:
    robot = PointMass(dt=1.0 / RATE)
    stats = aiofranka.run(robot, policy, rate_hz=RATE, duration=DURATION, warmup_s=0.1)
    print(f"position after {DURATION:g} s: {robot.x[0]:.3f} m (target {TARGET} m)")
    print(stats)
    print(stats.to_dict())


if __name__ == "__main__":
    main()
