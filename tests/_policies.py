"""Policies used by the simulator tests of the offload helpers (importable by child processes)."""

from __future__ import annotations

import time


def gone_within(pid: int, seconds: float) -> bool:
    """True once process ``pid`` no longer exists, polling for up to ``seconds``."""
    import os

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def burn_python(seconds: float) -> int:
    """Pure-Python work that holds the GIL for ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


class GilHoggingPolicy:
    """A policy whose every call is ``work_s`` of pure Python; returns its input."""

    def __init__(self, work_s: float = 0.02) -> None:
        self.work_s = work_s
        self.calls = 0

    def act(self, q):
        burn_python(self.work_s)
        self.calls += 1
        return q


_BACKTRACK = None
_BACKTRACK_LENGTHS: dict[float, int] = {}


def hold_gil(seconds: float) -> float:
    """One C call that keeps the GIL for about ``seconds`` (a regular
    expression backtracking; it never returns to the interpreter, so no other
    Python thread runs meanwhile). Returns how long it took."""
    global _BACKTRACK
    import re

    if _BACKTRACK is None:
        _BACKTRACK = re.compile(r"(a+)+$")
    n = _BACKTRACK_LENGTHS.get(seconds)
    if n is None:  # each extra character doubles the time: find the length once
        n = 10
        while n < 32:
            start = time.perf_counter()
            _BACKTRACK.match("a" * n + "b")
            if time.perf_counter() - start >= seconds / 2:
                break
            n += 1
        n += 1
        _BACKTRACK_LENGTHS[seconds] = n
    start = time.perf_counter()
    _BACKTRACK.match("a" * n + "b")
    return time.perf_counter() - start


class GilHoldingPolicy:
    """A policy whose every call is one C call of about ``work_s`` holding the GIL."""

    def __init__(self, work_s: float = 0.02) -> None:
        self.work_s = work_s
        hold_gil(work_s)  # calibrate before the loop starts

    def act(self, q):
        hold_gil(self.work_s)
        return q


def blocking_policy(q, work_s: float = 0.02):
    """A policy that blocks (GIL released) for ``work_s``, like I/O or a GPU sync."""
    time.sleep(work_s)
    return q


def make_mlp(seed: int = 0):
    """A torch MLP with 3 hidden layers of 512 (64 -> 7), batch 1, in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 7),
    ).eval()
    return model
