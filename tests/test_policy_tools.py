"""profile_sync_inference, recommend_inference_mode and check_policy, on a fake clock where timing matters."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from _policies import burn_python
from aiofranka.pacing import FakeClock
from aiofranka.policy import Action, Command, Frame, InferenceMode, check_policy, profile_sync_inference
from aiofranka.policy.execution import ControllerExecutor
from aiofranka.policy.tools import gil_share, recommend, trimmed_mean


def chunk_of(n, value=0.0):
    return [Action({"arm": Command("joint_position", np.full(7, value + i))}) for i in range(n)]


def frame():
    return Frame(state={"q": np.zeros(7)})


async def test_the_profile_takes_trimmed_means_in_seconds_and_steps(tmp_path):
    clock = FakeClock()
    durations = iter([0.5, 0.040, 0.041, 0.039, 0.200, 0.040, 0.040])  # a slow first call, one outlier

    def policy(f, request):
        clock.advance(next(durations))
        return chunk_of(20)

    profile = await profile_sync_inference(observe_fn=frame, act_src_fn=policy, control_hz=30, requests=6,
                                           startup_ignore_requests=1, trim_ratio=0.2, probe_gil=False,
                                           clock=clock, output_path=tmp_path / "profile.json")
    assert profile.inference_time_s == pytest.approx(trimmed_mean([0.040, 0.041, 0.039, 0.2, 0.04, 0.04], 0.2))
    assert profile.inference_time_s == pytest.approx(0.04025)
    assert profile.latency_steps == 2 + 1  # ceil(40.25 ms / 33.3 ms) + the safety margin
    assert profile.chunk_steps == 20 and profile.max_buffered_hz == pytest.approx(20 / 0.04025)
    assert profile.requests == 6 and profile.ignored_requests == 1 and not profile.awaitable
    assert json.loads((tmp_path / "profile.json").read_text())["latency_steps"] == 3


@pytest.mark.timing
def test_the_gil_probe_tells_pure_python_from_blocking_work():
    # Alternated, so that a busy host weighs on both alike; the medians must be far apart.
    holding, releasing = [], []
    for _ in range(3):
        holding.append(gil_share(lambda: burn_python(0.01)))
        releasing.append(gil_share(lambda: time.sleep(0.01)))
    assert np.median(holding) < 0.7 < np.median(releasing) or np.median(releasing) - np.median(holding) > 0.3, (
        holding, releasing)


async def test_the_profile_reports_the_probe_and_awaitables():
    async def awaitable(f, r):
        return chunk_of(3)

    profiled = await profile_sync_inference(frame=frame(), act_src_fn=awaitable, control_hz=30, requests=2)
    assert profiled.awaitable and profiled.releases_gil is None  # an awaitable is not probed
    blocking = await profile_sync_inference(frame=frame(), act_src_fn=lambda f, r: (time.sleep(0.002),
                                                                                     chunk_of(3))[1],
                                            control_hz=30, requests=2)
    assert blocking.releases_gil in (True, False) and not blocking.awaitable


def profile(**fields):
    base = dict(control_hz=30.0, period_s=1 / 30, requests=5, ignored_requests=1, step_time_s=0.05,
                inference_time_s=0.05, inference=None, latency_steps=3, chunk_steps=20.0, max_buffered_hz=400.0,
                awaitable=False, releases_gil=True, torch_loaded=False)
    base.update(fields)
    from aiofranka.policy.tools import SyncInferenceProfile

    return SyncInferenceProfile(**base)


def test_the_recommendation_picks_the_mode():
    assert recommend(profile()).mode is InferenceMode.ASYNC
    single = recommend(profile(chunk_steps=1.0, step_time_s=0.01, inference_time_s=0.01))
    assert single.mode is InferenceMode.SYNC and single.execution_steps == 1
    fast = recommend(profile(step_time_s=0.002, inference_time_s=0.002, latency_steps=2))
    assert fast.mode is InferenceMode.SYNC and fast.execution_steps == 20
    slow = recommend(profile(inference_time_s=1.0, step_time_s=1.0, latency_steps=31))
    assert slow.mode is InferenceMode.ASYNC and any("starve" in r for r in slow.reasons)


def test_the_recommendation_keeps_a_buffer_of_twice_the_latency():
    r = recommend(profile())
    assert r.steps_before_request == min(20 - 2 * 3 - 2, 20 // 2)  # at the latest half-way
    assert 20 - r.steps_before_request >= 2 * 3 + 2
    assert r.execution_steps < 20 - r.steps_before_request  # RTC's window fits
    assert r.execution_steps > 3  # longer than the latency


def test_the_recommendation_picks_the_helper_from_what_it_measured():
    assert recommend(profile(inference_time_s=0.0001)).helper == "inline"
    assert recommend(profile(releases_gil=False)).helper == "mpify"
    assert recommend(profile(torch_loaded=True)).helper == "CudaInferenceThread"
    assert recommend(profile()).helper == "asyncify"
    assert recommend(profile(awaitable=True)).helper.startswith("keep")
    data = recommend(profile()).to_dict()
    assert data["mode"] == "async" and json.dumps(data)


async def test_check_policy_observes_once_infers_once_and_never_acts():
    calls = {"observe": 0, "infer": 0}

    def observe():
        calls["observe"] += 1
        return frame()

    async def policy(f, request):
        calls["infer"] += 1
        return chunk_of(8)

    report = await check_policy(observe_fn=observe, act_src_fn=policy)
    assert calls == {"observe": 1, "infer": 1}
    assert report.chunk_len == 8 and report.targets == (("arm", "joint_position", (7,)),)
    assert report.state_keys == ("q",)


async def test_check_policy_names_what_is_wrong():
    mixed = chunk_of(2) + [Action({"arm": Command("joint_position", np.zeros(7)), "gripper": ("gripper_position",
                                                                                             0.0)})]
    with pytest.raises(ValueError, match="action 2 has layout"):
        await check_policy(frame=frame(), act_src_fn=lambda f, r: mixed)
    with pytest.raises(TypeError, match="act_src_fn must return an Action"):
        await check_policy(frame=frame(), act_src_fn=lambda f, r: np.zeros((4, 7)))
    executor = ControllerExecutor(controller=None)
    with pytest.raises(ValueError, match="command for 'wrist'"):
        await check_policy(frame=frame(), executor=executor,
                           act_src_fn=lambda f, r: [Action({"wrist": ("joint_position", np.zeros(7))})])
    with pytest.raises(ValueError, match=r"frame.state\['q'\]"):
        await check_policy(frame=Frame(), executor=executor,
                           act_src_fn=lambda f, r: [Action({"arm": ("joint_position_delta", np.zeros(7))})])
    assert dataclasses.is_dataclass(await check_policy(frame=frame(), act_src_fn=lambda f, r: chunk_of(1)))
