"""A Session policy on the (simulated) arm: aiofranka.run over a Franka adapter at 30 Hz.

The Franka adapter gives a Session what it needs (observe, act, reset) over a
controller; with FrankaRemoteController the 1 kHz loop runs in its own process
and the session thread here never competes with it for the GIL. The policy
moves the end effector 5 cm down and back in Cartesian impedance. Run it with
python examples/05_session_franka.py
"""

import numpy as np

import aiofranka
from aiofranka import Franka, FrankaRemoteController, limits

RATE = 30.0  # Hz
DURATION = 4.0  # s


class DipPolicy:
    """Returns an end-effector pose target: 5 cm below the start and back, over DURATION."""

    def __init__(self) -> None:
        self.start = None
        self.t0 = 0.0

    def __call__(self, obs: dict) -> np.ndarray:
        if self.start is None:
            self.start, self.t0 = obs["ee"].copy(), obs["time_s"]
        target = self.start.copy()
        phase = min((obs["time_s"] - self.t0) / DURATION, 1.0)
        target[2, 3] -= 0.05 * np.sin(np.pi * phase)
        return target


def main() -> None:
    with FrankaRemoteController() as ctl:
        franka = Franka(ctl, action="ee_desired", reset_q=limits.Q_HOME)
        stats = aiofranka.run(franka, DipPolicy(), rate_hz=RATE, duration=DURATION)
        print(stats)
        print(f"end effector z: {franka.observe()['ee_pos'][2]:.3f} m; "
              f"server loop lost {ctl.stats.lost_cycles} cycles")


if __name__ == "__main__":
    main()
