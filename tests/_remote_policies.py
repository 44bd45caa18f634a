"""Objects the remote policy tests serve with ``aiofranka serve`` in a child process."""

from __future__ import annotations

import time

import numpy as np


class Echo:
    """Returns what it is given; ``sleep`` blocks like a slow model; counts its calls."""

    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag
        self.calls = 0

    def echo(self, value):
        self.calls += 1
        return value

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str):
        raise ValueError(message)

    def describe(self, array):
        return {"dtype": array.dtype.str, "shape": list(array.shape), "sum": float(np.sum(array))}


def make_act_like(q_center, chunk: int = 20):
    """The ACT-like torch policy of the offload tests, on one torch thread (the CPUs are shared)."""
    import torch

    from _policies import ActLikePolicy

    torch.set_num_threads(1)
    return ActLikePolicy(np.asarray(q_center, dtype=float), chunk=chunk)


class NearHold:
    """Chunks of targets a few mrad around ``q_center``, a function of the robot clock only, so a
    restarted server continues where the last one stopped (no jump)."""

    def __init__(self, q_center, chunk: int = 10, control_hz: float = 30.0) -> None:
        self.q_center = np.asarray(q_center, dtype=float)
        self.chunk = chunk
        self.period_s = 1.0 / control_hz
        self.calls = 0

    def infer(self, frame, request):
        from aiofranka.policy import Action, Command

        t = frame.meta["robot_time_ms"] / 1000.0 + self.period_s * (1 + np.arange(self.chunk))
        targets = np.repeat(self.q_center[None], self.chunk, axis=0)
        targets[:, 0] += 0.005 * np.sin(2 * np.pi * 0.3 * t)
        self.calls += 1
        return [Action({"arm": Command("joint_position", q)}) for q in targets]
