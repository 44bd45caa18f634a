"""Measuring a policy before running it: :func:`profile_sync_inference`, :func:`recommend_inference_mode`, :func:`check_policy`.

The profile calls the policy back to back as a synchronous loop would and
reports robust (trimmed-mean) timings in seconds and in control steps; the
recommendation turns them into a mode, settings and the offload helper to
serve the policy through; the check is a dry run (one observation, one
inference, no action). See docs/policies.md#measuring-a-policy.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import validation
from ..stats import Summary
from .contract import ChunkRequest, Frame, normalize_chunk
from .runtime import InferenceMode

__all__ = ["InferenceModeRecommendation", "PolicyCheck", "SyncInferenceProfile", "check_policy",
           "profile_sync_inference", "recommend_inference_mode"]

#: Work shorter than this (s) may run inline on the event loop: below the Controller's stall threshold.
INLINE_LIMIT_S = 3e-4


def trimmed_mean(samples, trim_ratio: float) -> float:
    """The mean of ``samples`` without the ``trim_ratio`` smallest and largest of them (at least one each
    side when there are three or more and ``trim_ratio > 0``)."""
    values = np.sort(np.asarray(samples, dtype=float))
    if values.size == 0:
        return float("nan")
    trim = int(values.size * trim_ratio)
    if trim_ratio > 0 and values.size >= 3:
        trim = max(trim, 1)
    if values.size > 2 * trim:
        values = values[trim:values.size - trim]
    return float(values.mean())


@dataclasses.dataclass(frozen=True)
class SyncInferenceProfile:
    """What :func:`profile_sync_inference` measured (times in seconds unless named otherwise).

    ``step_time_s`` and ``inference_time_s`` are trimmed means over the kept
    requests (``inference`` is their distribution, µs); ``latency_steps`` is the
    inference time in control steps, rounded up, plus the safety margin;
    ``chunk_steps`` the mean chunk length; ``max_buffered_hz`` the fastest
    control rate the chunks could feed if requests ran back to back
    (``chunk_steps / inference_time_s``); ``releases_gil``: whether a
    pure-Python thread kept running during a call (``None``: not probed).
    """

    control_hz: float
    period_s: float
    requests: int
    ignored_requests: int
    step_time_s: float
    inference_time_s: float
    inference: Summary
    latency_steps: int
    chunk_steps: float
    max_buffered_hz: float
    awaitable: bool
    releases_gil: bool | None
    torch_loaded: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class InferenceModeRecommendation:
    """A mode, settings and an offload helper for a policy, with the reasons and the profile they rest on."""

    mode: InferenceMode
    helper: str
    steps_before_request: int
    execution_steps: int
    reasons: tuple[str, ...]
    profile: SyncInferenceProfile

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["mode"] = str(self.mode)
        return data

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


async def _observe(observe_fn, frame) -> Frame:
    if frame is not None:
        return Frame.coerce(frame, source="frame")
    if observe_fn is None:
        raise ValueError("observe_fn or frame is needed")
    return Frame.coerce(await _maybe_await(observe_fn()), source="observe_fn")


def _request(step: int = 0) -> ChunkRequest:
    return ChunkRequest(request_step=step, request_time_s=time.monotonic(), remaining_steps=0, latency_steps=0)


def _best_spin_rate(windows: int, window_s: float, stop: threading.Event | None = None) -> float:
    """The best pure-Python speed (increments/s) over ``windows`` stretches of ``window_s``: the best stretch
    is the one the host did not take the CPU away in."""
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        end = start + window_s
        while time.perf_counter() < end:
            for _ in range(50):
                count += 1
        best = max(best, count / (time.perf_counter() - start))
        if stop is not None and stop.is_set():
            break
    return best


def gil_share(call: Callable[[], Any], windows: int = 10, window_s: float = 0.02) -> float:
    """How much of its speed a pure-Python thread keeps beside repeated ``call``s on this thread (its best
    20 ms stretch beside them over its best stretch alone): about 1 when the call releases the GIL, about
    half when it holds it.

    Two pure-Python threads share the GIL in turns of the switch interval (5 ms), so beside a call that
    holds the GIL even the best stretch is about half; best stretches, not averages, because the host
    may take the CPU away from either.
    """
    solo = _best_spin_rate(windows, window_s)
    rates = []
    stop = threading.Event()
    worker = threading.Thread(target=lambda: rates.append(_best_spin_rate(windows, window_s, stop)),
                              name="aiofranka-gil-probe", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            call()
    finally:
        stop.set()
        worker.join()
    return rates[0] / solo if rates and solo > 0 else 0.0


def _probe_gil(call: Callable[[], Any]) -> bool:
    """Whether ``call`` spends its time with the GIL released (:func:`gil_share` above three quarters)."""
    return gil_share(call) > 0.75


async def profile_sync_inference(*, observe_fn=None, act_src_fn, control_hz: float, frame=None, act_fn=None,
                                 execute_action: bool = False, startup_ignore_requests: int = 1,
                                 requests: int = 5, window: int = 64, trim_ratio: float = 0.1,
                                 safety_margin_steps: int = 1, probe_gil: bool = True, output_path=None,
                                 clock: Callable[[], float] = time.perf_counter) -> SyncInferenceProfile:
    """Call the policy ``startup_ignore_requests + requests`` times back to back, as a synchronous loop would.

    Each request observes (``observe_fn`` or the fixed ``frame``), infers and,
    with ``execute_action``, calls ``act_fn`` with the first action. The first
    ``startup_ignore_requests`` are not counted (warm-up); the timings are
    trimmed means (``trim_ratio`` from each end) over the newest ``window``
    counted requests. ``probe_gil``: one more round of calls, on this thread,
    beside a pure-Python thread, to learn whether the policy releases the GIL
    (only for a synchronous policy; it blocks this thread for about as long
    as the profile did: do it before the Controller starts). ``output_path``:
    write the profile as JSON.
    """
    hz = validation.positive("control_hz", control_hz, upper=1000.0)
    period = 1.0 / hz
    ignored = _nonnegative_int("startup_ignore_requests", startup_ignore_requests)
    counted = _nonnegative_int("requests", requests)
    if counted < 1:
        raise ValueError(f"requests must be >= 1, got {requests!r}")
    window = _nonnegative_int("window", window)
    if not 0.0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio!r}")
    steps, infers, lengths = [], [], []
    awaitable = False
    last_frame = None
    for index in range(ignored + counted):
        start = clock()
        current = await _observe(observe_fn, frame)
        begun = clock()
        value = act_src_fn(current, _request(index))
        if inspect.isawaitable(value):
            awaitable = True
            value = await value
        inferred = clock()
        chunk = normalize_chunk(value, "act_src_fn")
        if execute_action and act_fn is not None:
            await _maybe_await(act_fn(chunk[0]))
        done = clock()
        last_frame = current
        if index >= ignored:
            steps.append(done - start)
            infers.append(inferred - begun)
            lengths.append(len(chunk))
    steps, infers, lengths = steps[-window:], infers[-window:], lengths[-window:]
    inference_s = trimmed_mean(infers, trim_ratio)
    chunk_steps = float(np.mean(lengths))
    releases = None
    if probe_gil and not awaitable:
        releases = _probe_gil(lambda: act_src_fn(last_frame, _request()))
    profile = SyncInferenceProfile(
        control_hz=hz, period_s=period, requests=counted, ignored_requests=ignored,
        step_time_s=trimmed_mean(steps, trim_ratio), inference_time_s=inference_s,
        inference=Summary.from_ns(np.asarray(infers) * 1e9), latency_steps=int(math.ceil(inference_s / period - 1e-9))
        + _nonnegative_int("safety_margin_steps", safety_margin_steps), chunk_steps=chunk_steps,
        max_buffered_hz=chunk_steps / inference_s if inference_s > 0 else float("inf"), awaitable=awaitable,
        releases_gil=releases, torch_loaded="torch" in sys.modules)
    if output_path is not None:
        profile.write_json(output_path)
    return profile


def _nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def recommend(profile: SyncInferenceProfile) -> InferenceModeRecommendation:
    """The recommendation :func:`recommend_inference_mode` makes from a profile (pure)."""
    reasons = []
    period = profile.period_s
    chunked = profile.chunk_steps > 1.0
    if profile.step_time_s <= period and not chunked:
        mode = InferenceMode.SYNC
        reasons.append(f"one action per call, and a step ({profile.step_time_s * 1000:.1f} ms) fits the "
                       f"{period * 1000:.1f} ms period")
    elif not chunked:
        mode = InferenceMode.SYNC
        reasons.append(f"a step takes {profile.step_time_s * 1000:.1f} ms, more than the {period * 1000:.1f} ms "
                       f"period, but the policy returns one action per call: async scheduling needs chunks")
    elif profile.inference_time_s < 0.1 * period:
        mode = InferenceMode.SYNC
        reasons.append(f"inference ({profile.inference_time_s * 1000:.2f} ms) is under a tenth of the period: the "
                       f"arm's pause at each synchronous request is negligible")
    else:
        mode = InferenceMode.ASYNC
        reasons.append(f"chunks of {profile.chunk_steps:.0f} and inference of {profile.inference_time_s * 1000:.1f} ms "
                       f"({profile.latency_steps} steps with the margin): a synchronous loop would pause the arm "
                       f"at every request; keep one request in flight instead")
    chunk = max(1, int(round(profile.chunk_steps)))
    latency = profile.latency_steps
    # Request again while twice the latency (and two steps) is still buffered, and at the latest half-way.
    steps_before_request = max(0, min(chunk - 2 * latency - 2, chunk // 2)) if mode is InferenceMode.ASYNC else 0
    execution_steps = max(1, min(chunk - steps_before_request - 1, latency + 1)) if chunk > 1 else 1
    if mode is InferenceMode.ASYNC:
        if latency >= chunk:
            reasons.append(f"the latency ({latency} steps) is not shorter than a chunk ({chunk}): the arm will "
                           f"starve; a shorter latency, longer chunks or a lower control_hz are needed")
        else:
            reasons.append(f"steps_before_request={steps_before_request} leaves {chunk - steps_before_request} "
                           f"buffered steps for a {latency}-step latency")
    else:
        execution_steps = chunk
    if profile.awaitable:
        helper = "keep (already awaitable)"
        reasons.append("the policy is already awaitable (offloaded): it is kept as it is")
    elif profile.inference_time_s <= INLINE_LIMIT_S:
        helper = "inline"
        reasons.append(f"a call takes {profile.inference_time_s * 1e6:.0f} us, under the loop's "
                       f"{INLINE_LIMIT_S * 1e6:.0f} us stall threshold: it may run on the event loop")
    elif profile.releases_gil is False:
        helper = "mpify"
        reasons.append("a pure-Python thread stalled during the calls: the policy holds the GIL, so it belongs "
                       "in a child process (mpify/ampify)")
    elif profile.torch_loaded:
        helper = "CudaInferenceThread"
        reasons.append("a torch model: keep it on one dedicated thread (its CUDA context, one stream)")
    else:
        helper = "asyncify"
        reasons.append("blocking work that releases the GIL: a worker thread (asyncify)")
    return InferenceModeRecommendation(mode=mode, helper=helper, steps_before_request=steps_before_request,
                                       execution_steps=execution_steps, reasons=tuple(reasons), profile=profile)


async def recommend_inference_mode(*, observe_fn=None, act_src_fn, control_hz: float, output_path=None,
                                   **profile_options) -> InferenceModeRecommendation:
    """Profile the policy (:func:`profile_sync_inference`) and recommend a mode, settings and a helper.

    The helper is ``"inline"`` (a call under the loop's 0.3 ms stall
    threshold), ``"mpify"`` (the calls hold the GIL), ``"CudaInferenceThread"``
    (a torch model), ``"asyncify"`` (other blocking work) or ``"keep"`` for a
    policy that is already awaitable. ``output_path``: write it as JSON.
    """
    profile = await profile_sync_inference(observe_fn=observe_fn, act_src_fn=act_src_fn, control_hz=control_hz,
                                           **profile_options)
    recommendation = recommend(profile)
    if output_path is not None:
        recommendation.write_json(output_path)
    return recommendation


@dataclasses.dataclass(frozen=True)
class PolicyCheck:
    """What :func:`check_policy` saw: the frame's keys, the chunk's length, its targets and kinds, the call's time."""

    state_keys: tuple[str, ...]
    image_keys: tuple[str, ...]
    chunk_len: int
    targets: tuple[tuple[str, str, tuple[int, ...]], ...]
    inference_time_s: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


async def check_policy(*, act_src_fn, observe_fn=None, frame=None, executor=None) -> PolicyCheck:
    """A dry run: at most one observation and one inference, and no action.

    Checks that the frame is a valid :class:`Frame`, that the reply is an
    :class:`Action` or a non-empty list of them with built-in or ``custom:``
    kinds, one layout through the chunk, and, with ``executor`` (for example
    a :class:`~aiofranka.policy.ControllerExecutor`), that it drives every
    target and kind (``resolve_chunk``; nothing is played). Raises
    ``ValueError``/``TypeError`` naming the problem; the policy's own errors
    propagate as they are.
    """
    current = await _observe(observe_fn, frame)
    started = time.perf_counter()
    reply = await _maybe_await(act_src_fn(current, _request()))
    elapsed = time.perf_counter() - started
    chunk = normalize_chunk(reply, "act_src_fn")
    layout = chunk[0].layout()
    for index, action in enumerate(chunk[1:], 1):
        if action.layout() != layout:
            raise ValueError(f"act_src_fn returned a chunk whose action {index} has layout {action.layout()}, "
                             f"not the first action's {layout}")
    if executor is not None:
        executor.resolve_chunk(chunk, current)
    return PolicyCheck(state_keys=tuple(sorted(current.state)), image_keys=tuple(sorted(current.images)),
                       chunk_len=len(chunk), targets=layout, inference_time_s=elapsed)
