"""Replay a recorded episode through the policy runtime: :class:`ReplayPolicy`, :func:`actions_by_step`,
:func:`replay` (also importable from :mod:`aiofranka.policy.episodes`). Guide: docs/episodes.md#replay.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .contract import Action

if TYPE_CHECKING:  # pragma: no cover
    from .episodes import Episode

__all__ = ["ReplayPolicy", "ReplayReport", "actions_by_step", "replay"]


class ReplayPolicy:
    """A policy that answers with the recorded actions: ``actions[request.request_step:]``, ``chunk`` of them.

    Past the end it repeats the last action (the arm holds). Use it as ``act_src_fn``.
    """

    def __init__(self, actions: Sequence[Action], *, chunk: int = 20) -> None:
        if not actions:
            raise ValueError("actions must not be empty")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        self.actions = list(actions)
        self.chunk = chunk
        self.calls = 0

    def __call__(self, frame, request) -> list[Action]:
        self.calls += 1
        start = min(request.request_step, len(self.actions) - 1)
        out = self.actions[start:start + self.chunk]
        return out + [self.actions[-1]] * (self.chunk - len(out))


def actions_by_step(episode: Episode) -> list[Action]:
    """The recorded action for every runtime step from 0 to the last one recorded (the newest row for a step;
    a step with no row repeats the one before, the first ones take the first action)."""
    by_step: dict[int, Action] = {}
    for index, action in zip(episode.step_index.tolist(), episode.actions):
        if index >= 0:
            by_step[index] = action
    if not by_step:
        return list(episode.actions)
    out, last = [], episode.actions[0]
    for step in range(max(by_step) + 1):
        last = by_step.get(step, last)
        out.append(last)
    return out


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """The replayed against the recorded joint trajectory, step by step: per-joint ``rms`` and ``max``
    absolute difference (rad) over ``steps`` steps; ``max_abs`` the largest of all."""

    steps: int
    rms: np.ndarray
    max: np.ndarray
    replayed_q: np.ndarray
    recorded_q: np.ndarray

    @property
    def max_abs(self) -> float:
        return float(self.max.max())

    def table(self) -> str:
        head = "joint      " + " ".join(f"{j + 1:>8d}" for j in range(len(self.rms)))
        rms = "rms (mrad) " + " ".join(f"{1e3 * v:8.2f}" for v in self.rms)
        top = "max (mrad) " + " ".join(f"{1e3 * v:8.2f}" for v in self.max)
        return f"replay of {self.steps} steps, replayed - recorded joints\n{head}\n{rms}\n{top}"


async def replay(episode: Episode, controller, *, chunk: int = 20, runtime_options: dict | None = None,
                 move_first: bool = True, progress: bool = False) -> ReplayReport:
    """Play ``episode``'s actions on ``controller`` through the policy runtime and compare the joints.

    Moves to the first recorded ``q`` first (``move_first``), then runs one
    :func:`~aiofranka.policy.run_step` per recorded step with the built-in Controller
    observer and executor and a :class:`ReplayPolicy` (ASYNC, as recorded: the action for
    step k is executed at step k). Needs ``state["q"]`` in the episode.
    """
    from .execution import ControllerExecutor, ControllerObserver
    from .runtime import InferenceMode, InferenceRuntime, run_step

    if "q" not in episode.state:
        raise ValueError(f"replay compares joints: the episode must have state 'q' (it has {sorted(episode.state)})")
    recorded = np.asarray(episode.state["q"], dtype=np.float64)
    if move_first:
        await controller.move(recorded[0])
    options = {"mode": InferenceMode.ASYNC, "control_hz": episode.fps, "warmup_requests": 0,
               "profile_delay_requests": 1, "steps_before_request": max(0, chunk // 4)}
    options.update(runtime_options or {})
    runtime = InferenceRuntime(**options)
    observer, executor = ControllerObserver(controller), ControllerExecutor(controller)
    policy = ReplayPolicy(actions_by_step(episode), chunk=chunk)
    rows = episode.frame_index.astype(np.int64) - int(episode.frame_index[0])  # a dropped step leaves a gap
    replayed = []
    steps = range(int(rows[-1]) + 1)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="replay", unit="step")
    try:
        for _ in steps:
            result = await run_step(observe_fn=observer, act_fn=executor, act_src_fn=policy, runtime=runtime)
            replayed.append(np.asarray(result.frame.state["q"], dtype=np.float64))
    finally:
        runtime.close()
        controller.stop_playing()
    replayed_q = np.stack(replayed)[rows]  # compared where a recorded step exists
    difference = replayed_q - recorded
    return ReplayReport(steps=len(replayed_q), rms=np.sqrt((difference ** 2).mean(0)),
                        max=np.abs(difference).max(0), replayed_q=replayed_q, recorded_q=recorded)
