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
