"""A stand-in for pylibfranka's control object, for Kernel.cycle without the simulator (pure logic)."""

import types

import numpy as np
import pytest

from aiofranka import limits
from aiofranka.robot import StateBuffer

IMPEDANCE, OSC, TORQUE = 0, 1, 2


class RobotTime:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def to_sec(self) -> float:
        return self.ms / 1000.0


class Control:
    """Hands out a new state each readOnce: robot time counts up by ``step`` ms
    (or takes the values of ``times``); q and tau_J carry the time so a row can
    be matched to its state."""

    def __init__(self, times=None) -> None:
        self.ms = 1000
        self.step = 1
        self.written = []
        self._times = None if times is None else iter(times)  # robot times to hand out, in order

    def readOnce(self):
        self.ms = self.ms + self.step if self._times is None else next(self._times)
        state = types.SimpleNamespace(
            q=(limits.Q_HOME + 1e-6 * self.ms).tolist(), dq=[0.001 * self.ms] * 7,
            O_T_EE=np.eye(4).ravel().tolist(), time=RobotTime(self.ms), control_command_success_rate=0.5,
            tau_J=[float(self.ms)] * 7)
        return state, None

    def writeOnce(self, command) -> None:
        self.written.append(list(command.tau_J))


def torques(values):
    return types.SimpleNamespace(tau_J=values, motion_finished=False)


def frozen(values):
    array = np.array(values, dtype=float)
    array.flags.writeable = False
    return array


@pytest.fixture
def kernel():
    """A fresh kernel, its recording stopped afterwards."""
    kernel = StateBuffer().kernel
    kernel.new_session()
    yield kernel
    kernel.record_stop()


def serve(kernel, ctl, n: int, *, guardian: bool = False, torque: float = 0.3) -> None:
    for _ in range(n):
        kernel.cycle(ctl, torques, TORQUE, 1.0, 2 if guardian else 0, frozen([torque] * 7))
