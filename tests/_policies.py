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


def context_switches(tid: int) -> int:
    """Voluntary + involuntary context switches of one of our threads so far."""
    total = 0
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


FROZEN_SCRIPT = """
import asyncio
from aiofranka import Controller, Robot
async def main():
    with Robot() as robot:
        try:
            async with Controller(robot, serve={serve!r}) as controller:
                print("READY", controller.stats.serve, flush=True)
                await controller.wait(60)
        except Exception as exc:
            print("ENDED", type(exc).__name__, exc, flush=True)
asyncio.run(main())
"""


def frozen_child(serve: str, timeout: float = 30.0) -> tuple[str, str | None]:
    """A child holding a pose with ``Controller(serve=serve)``, frozen whole
    (SIGSTOP) for 200 ms: (its READY line, its output after, or None if it
    hung for ``timeout`` s)."""
    import os
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", FROZEN_SCRIPT.format(serve=serve)], stdout=subprocess.PIPE,
                             text=True)
    try:
        ready = child.stdout.readline()
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGCONT)
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out = None
        return ready, out
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


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


class ActLikePolicy:
    """A small ACT-like chunking policy with fixed weights (torch, CPU).

    A transformer decoder turns learned queries into a chunk of ``chunk`` joint
    targets, conditioned on the observed joints and time. Its output is a small
    bounded residual (±``residual`` rad, smooth along the chunk as a trained
    policy's is) around a slow reference motion about ``q_center``, evaluated at
    the chunk's future steps from the frame's robot time. The reference starts
    at the first frame the policy sees and fades in over 2 s. The arm moves, and successive chunks
    disagree a little, as a learned policy's do.
    """

    def __init__(self, q_center, *, chunk: int = 20, control_hz: float = 30.0, residual: float = 0.01,
                 seed: int = 0) -> None:
        import numpy as np
        import torch

        torch.manual_seed(seed)
        d = 64
        self.q_center = np.asarray(q_center, dtype=float)
        self.t0_ms = None
        self.chunk = chunk
        self.period_s = 1.0 / control_hz
        self.residual = residual
        self.state_in = torch.nn.Linear(9, d)
        self.queries = torch.nn.Parameter(0.1 * torch.randn(1, chunk, d), requires_grad=False)
        layer = torch.nn.TransformerDecoderLayer(d, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.decoder = torch.nn.TransformerDecoder(layer, num_layers=1)
        self.head = torch.nn.Linear(d, 7)
        for module in (self.state_in, self.decoder, self.head):
            module.eval()
        # A trained chunk is smooth along time: average the raw per-step outputs over a sliding window.
        self.smooth = torch.ones(7, 1, 9) / 9.0
        self.calls = 0

    def reference(self, t_s):
        import numpy as np

        t_s = np.asarray(t_s, dtype=float)
        q = np.broadcast_to(self.q_center, t_s.shape + (7,)).copy()
        fade_in = np.clip(t_s / 2.0, 0.0, 1.0)  # the arm holds while the runtime bootstraps: start gently
        q[..., 0] += fade_in * 0.15 * np.sin(2 * np.pi * 0.4 * t_s)
        q[..., 3] += fade_in * 0.10 * (1.0 - np.cos(2 * np.pi * 0.3 * t_s))
        return q

    def infer(self, frame, request):
        import numpy as np
        import torch

        from aiofranka.policy import Action, Command

        if self.t0_ms is None:
            self.t0_ms = frame.meta["robot_time_ms"]
        t_obs = (frame.meta["robot_time_ms"] - self.t0_ms) / 1000.0
        q = np.asarray(frame.state["q"], dtype=np.float32)
        features = np.concatenate([q, [np.sin(t_obs), np.cos(t_obs)]]).astype(np.float32)
        with torch.inference_mode():
            memory = self.state_in(torch.from_numpy(features))[None, None]
            out = self.head(self.decoder(self.queries, memory))  # (1, chunk, 7)
            out = torch.nn.functional.conv1d(out.transpose(1, 2), self.smooth, padding=4, groups=7)[0].T.numpy()
        times = t_obs + self.period_s * (1 + np.arange(self.chunk))
        targets = self.reference(times) + self.residual * np.tanh(out)
        self.calls += 1
        return [Action({"arm": Command("joint_position", target)}) for target in targets]
