"""The chunk-scheduling rules, as pure step arithmetic with an injectable clock.

:class:`ChunkScheduler` keeps the buffer of raw actions (one per control step),
the one request in flight, the latency estimate and the counters. It never
calls a policy and never sleeps: the runtime (``runtime.py``) asks it when to
request, hands it the replies, and tells it how many steps the arm has
executed. Steps are counted as executed actions, never as wall time: a step
the arm spent starved does not count. The rules are spelled out in
docs/policies.md; each has its own test in tests/test_policy_chunks.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Callable, Sequence

import numpy as np

from .. import validation
from ._se3 import blend_pose
from .contract import (
    BLENDABLE_KINDS, CARTESIAN_POSE, CARTESIAN_POSE_DELTA, Action, ChunkRequest, Command, normalize_chunk,
)

__all__ = ["ChunkScheduler", "Integration", "check_ensemble_weight"]


def check_ensemble_weight(value) -> float | tuple[float, float] | None:
    """``None``, a weight in [0, 1], or a ``(low, high)`` pair of them; ``ValueError`` naming ``ensemble_weight``."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"ensemble_weight must be a number or a (low, high) pair, got {value!r}")
        low, high = (validation.real("ensemble_weight", v, minimum=0.0) for v in value)
        if low > 1.0 or high > 1.0:
            raise ValueError(f"ensemble_weight values must be in [0, 1], got {value!r}")
        return (low, high)
    weight = validation.real("ensemble_weight", value, minimum=0.0)
    if weight > 1.0:
        raise ValueError(f"ensemble_weight must be in [0, 1], got {value!r}")
    return weight


@dataclasses.dataclass(frozen=True)
class Integration:
    """A reply that became the buffer: ``actions[i]`` is for step ``first_step + i``.

    ``previous`` is the action for step ``first_step - 1`` in the new chunk
    when the reply had one (the last stale action), otherwise the old buffer's:
    an executor interpolating between steps starts its first segment there.
    ``stale`` steps were dropped from the front; ``blended`` of the kept actions
    were blended with the launch-time buffer; ``frame`` is what the request saw.
    """

    first_step: int
    actions: tuple[Action, ...]
    previous: Action | None
    stale: int
    blended: int
    request: ChunkRequest
    frame: object = None


@dataclasses.dataclass
class _InFlight:
    request: ChunkRequest
    launch_buffer: list
    launched_at: float
    frame: object


class ChunkScheduler:
    """Buffer, request and latency bookkeeping for chunked policies, in control steps.

    ``control_hz``: the policy rate (one raw action per step).
    ``steps_before_request``: executed steps of an integrated chunk before the
    next request may leave. ``execution_steps``: ``truncate=True`` keeps only
    this many actions of each chunk (synchronous mode); with ``enable_rtc`` it
    is the RTC ``execute_horizon``. ``ensemble_weight``: ``None`` (the new chunk
    replaces the old), a weight of the new chunk, or ``(low, high)`` ramped from
    the earliest to the latest overlapping step. ``clock``: seconds, used only
    to measure request latency.

    Example (a fake policy whose values are the steps they are meant for)::

        from aiofranka.policy import Action, ChunkScheduler

        s = ChunkScheduler(control_hz=10, clock=lambda: 0.0)
        request = s.make_request()
        s.integrate([Action.single("arm", "joint_position", [float(request.request_step + i)] * 7)
                     for i in range(5)])
        s.pop()["arm"].value[0]    # 0.0
    """

    def __init__(self, *, control_hz: float, steps_before_request: int = 0, execution_steps: int | None = None,
                 ensemble_weight=None, latency_ema_beta: float = 0.5, latency_steps_offset: int = 0,
                 enable_rtc: bool = False, truncate: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = 1.0 / validation.positive("control_hz", control_hz, upper=1000.0)
        self.steps_before_request = _count("steps_before_request", steps_before_request, minimum=0)
        self.execution_steps = None if execution_steps is None else _count("execution_steps", execution_steps,
                                                                           minimum=1)
        self.ensemble_weight = check_ensemble_weight(ensemble_weight)
        beta = validation.real("latency_ema_beta", latency_ema_beta, minimum=0.0, strict=True)
        if beta > 1.0:
            raise ValueError(f"latency_ema_beta must be in (0, 1], got {latency_ema_beta!r}")
        self.latency_ema_beta = beta
        if isinstance(latency_steps_offset, bool) or not isinstance(latency_steps_offset, int):
            raise ValueError(f"latency_steps_offset must be an int, got {latency_steps_offset!r}")
        self.latency_steps_offset = latency_steps_offset
        self.enable_rtc = bool(enable_rtc)
        if self.enable_rtc and self.execution_steps is None:
            raise ValueError("enable_rtc=True needs execution_steps (the RTC execute_horizon)")
        self.truncate = bool(truncate)
        self.clock = clock
        #: Latency in control steps (EMA), ``None`` until measured; survives :meth:`reset`.
        self.latency_steps: float | None = None
        #: The chunk length, locked by the first chunk; survives :meth:`reset`.
        self.chunk_len: int | None = None
        self.requests = 0
        self.integrated = 0
        self.rejected = 0
        self.stale_steps_dropped = 0
        self.starved_ticks = 0
        self.blended_steps = 0
        self.reset()

    # -- the buffer -----------------------------------------------------------------

    def reset(self) -> None:
        """A new episode: the buffer, the step count and any request in flight are forgotten.

        The latency estimate, the locked chunk length and the counters stay.
        """
        #: Steps executed since the episode began (starved ticks do not count).
        self.executed = 0
        self._plan: list[Action] = []
        self._plan_start = 0
        self._last: Action | None = None  # the last executed action (held while starved)
        self._waited = 0  # executed steps since the last integration
        self._in_flight: _InFlight | None = None

    @property
    def in_flight(self) -> ChunkRequest | None:
        """The request whose reply is awaited (at most one)."""
        return None if self._in_flight is None else self._in_flight.request

    @property
    def plan_end(self) -> int:
        """The step after the last buffered action."""
        return self._plan_start + len(self._plan)

    @property
    def remaining_count(self) -> int:
        return max(0, self.plan_end - self.executed)

    def remaining(self) -> list[Action]:
        """The buffered actions from step :attr:`executed` on."""
        return self._plan[self.executed - self._plan_start:] if self.remaining_count else []

    def action_for(self, step: int) -> Action | None:
        """The buffered action for ``step`` (executed or not), or ``None``."""
        index = step - self._plan_start
        return self._plan[index] if 0 <= index < len(self._plan) else None

    @property
    def last_executed(self) -> Action | None:
        """The last action executed: the target held while starved."""
        return self._last

    @property
    def waited_steps(self) -> int:
        """Steps executed since the last chunk was integrated."""
        return self._waited

    def pop(self) -> Action | None:
        """Execute one step: the action for step :attr:`executed`, or ``None`` (starved: counted, hold the last)."""
        if self.executed < self.plan_end:
            action = self._plan[self.executed - self._plan_start]
            self.executed += 1
            self._waited += 1
            self._last = action
            return action
        self.starved_ticks += 1
        return None

    def advance_to(self, executed: int) -> int:
        """The arm has executed ``executed`` steps (an executor that plays the buffer itself); returns the new count.

        Never beyond the buffer, never backwards.
        """
        target = min(int(executed), self.plan_end)
        if target > self.executed:
            self._waited += target - self.executed
            self.executed = target
            self._last = self._plan[target - 1 - self._plan_start]
        return self.executed

    def count_starved(self, ticks: int = 1) -> None:
        self.starved_ticks += ticks

    # -- requests ---------------------------------------------------------------------

    def should_request(self) -> bool:
        """No request in flight, and either no buffer or ``steps_before_request`` steps executed since the last chunk."""
        if self._in_flight is not None:
            return False
        if self.remaining_count == 0:
            return True
        return self._waited >= self.steps_before_request

    def latency_hint(self) -> int:
        """The latency in whole steps the next request announces (rounded up, plus the offset; at least 0)."""
        base = 0 if self.latency_steps is None else math.ceil(self.latency_steps - 1e-9)
        return max(0, base + self.latency_steps_offset)

    def make_request(self, frame: object = None, *, rtc: bool | None = None,
                     seed: Sequence[Action] | None = None, due_s: float | None = None) -> ChunkRequest:
        """Launch a request (it becomes the one in flight) and return what the policy is told.

        ``rtc``: attach the RTC hints (default: ``enable_rtc``); they are built
        from the buffer, or from ``seed`` (a bootstrap reply) when it is empty.
        """
        if self._in_flight is not None:
            raise RuntimeError("a request is already in flight: exactly one at a time")
        remaining = self.remaining()
        latency = self.latency_hint()
        hints = {}
        if self.enable_rtc if rtc is None else rtc:
            source = remaining or list(seed or ()) or ([self._last] if self._last is not None else [])
            if source:
                horizon = self.execution_steps
                if latency > horizon:
                    warnings.warn(f"the latency estimate ({latency} steps) exceeds execution_steps ({horizon}); "
                                  f"inference_delay is clamped to {horizon}", RuntimeWarning, stacklevel=3)
                hints = dict(prev_action_chunk=self._prev_action_chunk(source),
                             inference_delay=min(max(latency, 1), horizon), execute_horizon=horizon)
        request = ChunkRequest(request_step=self.executed, request_time_s=float(self.clock()),
                               remaining_steps=len(remaining), latency_steps=latency, due_s=due_s, **hints)
        launch = list(remaining) if self.ensemble_weight is not None else []
        self._in_flight = _InFlight(request, launch, request.request_time_s, frame)
        self.requests += 1
        return request

    def _prev_action_chunk(self, source: Sequence[Action]) -> tuple[Action, ...]:
        # The first execute_horizon actions from the launch step on, padded on
        # the right with the last of them to the locked chunk length: a fixed
        # shape for the policy, prefix-aligned with its next chunk.
        total = self.chunk_len if self.chunk_len is not None else len(source)
        window = list(source[:min(len(source), self.execution_steps, total)])
        window.extend([window[-1]] * (total - len(window)))
        return tuple(window)

    @property
    def in_flight_frame(self):
        """The frame the request in flight was made from (``None`` when none is)."""
        return None if self._in_flight is None else self._in_flight.frame

    def cancel_request(self) -> None:
        """Forget the request in flight (its policy call failed or was cancelled)."""
        self._in_flight = None

    def reject_in_flight(self) -> None:
        """Discard the reply to the request in flight without using it (counted as rejected)."""
        if self._in_flight is not None:
            self._in_flight = None
            self.rejected += 1

    # -- replies --------------------------------------------------------------------------

    def check_chunk_length(self, length: int, source: str = "act_src_fn") -> None:
        """Lock the chunk length on the first chunk; later chunks must match; RTC's window must fit."""
        if self.chunk_len is None:
            if self.enable_rtc and self.execution_steps >= length - self.steps_before_request:
                raise ValueError(
                    f"RTC needs execution_steps < chunk length - steps_before_request; got execution_steps="
                    f"{self.execution_steps}, chunk length {length} ({source}), steps_before_request="
                    f"{self.steps_before_request}")
            self.chunk_len = length
        elif length != self.chunk_len:
            raise ValueError(f"{source} returned a chunk of {length} actions; the first chunk had {self.chunk_len} "
                             f"and the length is locked (call reset() on a new runtime to change it)")

    def observe_latency(self, steps: float) -> None:
        """One latency measurement in control steps into the EMA (the first one seeds it)."""
        if self.latency_steps is None:
            self.latency_steps = float(steps)
        else:
            beta = self.latency_ema_beta
            self.latency_steps = (1.0 - beta) * self.latency_steps + beta * float(steps)

    def integrate(self, reply, *, measure: bool = True, source: str = "act_src_fn") -> Integration | None:
        """The reply to the request in flight: blend, drop the stale prefix, make it the buffer.

        Returns ``None`` when the whole reply is stale (as old as its own
        length in executed steps): it is rejected and counted, and the buffer
        is kept. ``measure``: feed the request's latency to the EMA.
        """
        flight = self._in_flight
        if flight is None:
            raise RuntimeError("no request is in flight")
        self._in_flight = None
        chunk = normalize_chunk(reply, source)
        self.check_chunk_length(len(chunk), source)
        if measure:
            self.observe_latency((float(self.clock()) - flight.launched_at) / self.period_s)
        request = flight.request
        overlap = min(len(flight.launch_buffer), len(chunk)) if self.ensemble_weight is not None else 0
        blended_at = []
        for i in range(overlap):
            mixed = _blend(flight.launch_buffer[i], chunk[i], self._weight(i, overlap))
            if mixed is not None:
                chunk[i] = mixed
                blended_at.append(i)
        stale = self.executed - request.request_step
        if stale >= len(chunk):
            self.rejected += 1
            self.stale_steps_dropped += len(chunk)
            return None
        if self.truncate and self.execution_steps is not None:
            chunk = chunk[:stale + self.execution_steps]
        previous = chunk[stale - 1] if stale >= 1 else self.action_for(self.executed - 1)
        kept = chunk[stale:]
        blended = sum(1 for i in blended_at if i >= stale)
        self._plan = kept
        self._plan_start = self.executed
        self._waited = 0
        self.integrated += 1
        self.stale_steps_dropped += stale
        self.blended_steps += blended
        return Integration(first_step=self.executed, actions=tuple(kept), previous=previous, stale=stale,
                           blended=blended, request=request, frame=flight.frame)

    def _weight(self, index: int, overlap: int) -> float:
        weight = self.ensemble_weight
        if not isinstance(weight, tuple):
            return weight
        low, high = weight
        if overlap <= 1:
            return low
        return low + (high - low) * index / (overlap - 1)


def _blend(old: Action, new: Action, weight: float) -> Action | None:
    """``new`` blended with ``old`` (``weight`` is the new action's share), or ``None`` when the layouts differ
    or nothing in it can be blended (gripper and custom kinds keep the new value)."""
    if old.layout() != new.layout():
        return None
    commands = {}
    any_blended = False
    for target, command in new.commands.items():
        if command.kind not in BLENDABLE_KINDS:
            commands[target] = command
            continue
        previous = old.commands[target].value
        if command.kind in (CARTESIAN_POSE, CARTESIAN_POSE_DELTA) and command.value.shape == (4, 4):
            value = blend_pose(previous, command.value, weight)
        else:
            value = (1.0 - weight) * previous + weight * command.value
        commands[target] = Command(command.kind, value, command.ref_frame, command.meta)
        any_blended = True
    return Action(commands) if any_blended else None


def _count(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)
