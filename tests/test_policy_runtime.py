"""run_step and InferenceRuntime on a fake clock with a fake policy (no robot).

The fake policy's chunk values are the steps they are meant for, and it
replies a chosen number of control steps after it was called, so every
executed action must hold exactly the index of the step it executes at.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time

import numpy as np
import pytest

from aiofranka import PolicyCallbackError, PolicyError
from aiofranka.pacing import FakeClock
from aiofranka.policy import Action, Command, Frame
from aiofranka.policy.runtime import InferenceMode, InferenceRuntime, run_step, run_step_sync

HZ = 10.0


def step_chunk(request, n, offset=0.0):
    return [Action({"arm": Command("joint_position", np.full(7, request.request_step + i + offset))})
            for i in range(n)]


def value(action):
    return float(action["arm"].value[0])


class StepPolicy:
    """Replies ``latency`` ticks after a call (immediately during the first ``immediate`` calls),
    advancing the fake clock by ``durations[i]`` for call i when it replies at once."""

    def __init__(self, clock: FakeClock, n: int = 10, latency: int = 3, immediate: int = 0, durations=()):
        self.clock, self.n, self.latency, self.immediate = clock, n, latency, immediate
        self.durations = list(durations)
        self.requests = []
        self.waiting = []

    async def __call__(self, frame, request):
        index = len(self.requests)
        self.requests.append(request)
        if index < self.immediate:
            if index < len(self.durations):
                self.clock.advance(self.durations[index])
            return step_chunk(request, self.n)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append([future, self.latency])
        await future
        return step_chunk(request, self.n)

    def tick(self) -> None:
        """One control step of (fake) time passes."""
        self.clock.advance(1.0 / HZ)
        for entry in self.waiting:
            entry[1] -= 1
            if entry[1] <= 0 and not entry[0].done():
                entry[0].set_result(None)


class Arm:
    def __init__(self):
        self.executed = []

    def observe(self):
        return Frame(state={"q": np.zeros(7)})

    def act(self, action):
        self.executed.append(value(action))


async def drive(runtime, policy, arm, steps):
    results = []
    for _ in range(steps):
        results.append(await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                                      pace_control=False))
        policy.tick()
        await asyncio.sleep(0)  # let a released reply finish
    return results


def make(clock, **options):
    options.setdefault("mode", InferenceMode.ASYNC)
    options.setdefault("warmup_requests", 0)
    options.setdefault("profile_delay_requests", 0)
    return InferenceRuntime(control_hz=HZ, clock=clock, **options)


async def test_async_steps_execute_the_action_meant_for_each_step_across_switches():
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=3, immediate=1)
    arm = Arm()
    runtime = make(clock, steps_before_request=2)
    await drive(runtime, policy, arm, 60)
    assert arm.executed == [float(k) for k in range(60)]  # no repeat, no skip, never starved
    stats = runtime.stats
    assert stats.starved_ticks == 0 and stats.rejected == 0
    assert stats.integrated >= 10 and stats.stale_steps_dropped > 0
    assert stats.latency_steps == pytest.approx(3.0, abs=1.0)


async def test_a_policy_slower_than_its_chunk_starves_and_the_last_target_is_held():
    clock = FakeClock()
    policy = StepPolicy(clock, n=4, latency=6, immediate=1)
    arm = Arm()
    runtime = make(clock)
    results = await drive(runtime, policy, arm, 20)
    stats = runtime.stats
    assert stats.starved_ticks > 0 and stats.rejected > 0
    starved = [r for r in results if r.starved]
    assert len(starved) == stats.starved_ticks
    assert all(r.raw_action is None for r in starved)
    # While starved the last executed action is sent again (held), never a new one.
    held = arm.executed[results.index(starved[0])]
    assert held == arm.executed[results.index(starved[0]) - 1]


async def test_exactly_one_request_is_in_flight():
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=50, immediate=1)
    runtime = make(clock)
    await drive(runtime, policy, Arm(), 8)
    assert len(policy.requests) == 2 and runtime.stats.in_flight


async def test_bootstrap_warms_up_profiles_then_acts():
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=1, immediate=4, durations=[5.0, 0.2, 0.3, 0.4])
    arm = Arm()
    runtime = make(clock, warmup_requests=1, profile_delay_requests=3)
    result = await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                            pace_control=False)
    # One untimed warm-up (5 s ignored), three timed: latency = mean(0.2, 0.3, 0.4) s = 3 steps at 10 Hz.
    assert runtime.stats.bootstrap_requests == 4 and len(policy.requests) >= 4
    assert runtime.scheduler.latency_steps == pytest.approx(3.0)
    assert arm.executed == [0.0] and result.plan_refreshed  # nothing was executed before the bootstrap ended
    assert all(r.request_step == 0 for r in policy.requests[:4])


async def test_rtc_bootstrap_first_request_goes_without_hints():
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=1, immediate=3, durations=[0.1, 0.1, 0.1])
    runtime = make(clock, warmup_requests=1, profile_delay_requests=2, enable_rtc=True, execution_steps=4)
    await drive(runtime, policy, Arm(), 3)
    first, second = policy.requests[0], policy.requests[1]
    assert not first.rtc and first.prev_action_chunk is None and first.inference_delay is None
    assert second.rtc and len(second.prev_action_chunk) == 10 and second.execute_horizon == 4
    assert [value(a) for a in second.prev_action_chunk] == [0.0, 1.0, 2.0, 3.0] + [3.0] * 6
    steady = policy.requests[3]
    assert steady.rtc and 1 <= steady.inference_delay <= 4


@pytest.mark.parametrize("rule", ["warn", "abort"])
async def test_a_slow_rtc_bootstrap_warns_or_aborts_and_never_asks(rule, monkeypatch):
    def no_input(*args):
        raise AssertionError("input() was called")

    monkeypatch.setattr(builtins, "input", no_input)
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=1, immediate=3, durations=[0.1, 0.6, 0.1])
    runtime = make(clock, warmup_requests=1, profile_delay_requests=2, enable_rtc=True, execution_steps=4,
                   slow_rtc_bootstrap=rule)
    arm = Arm()
    if rule == "warn":
        with pytest.warns(RuntimeWarning, match="RTC hints took 600 ms"):
            await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                           pace_control=False)
        assert arm.executed == [0.0]
    else:
        with pytest.raises(PolicyError, match="aborted"):
            await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                           pace_control=False)
        assert arm.executed == []


async def test_the_rtc_window_constraint_is_checked_before_anything_moves():
    clock = FakeClock()
    policy = StepPolicy(clock, n=5, latency=1, immediate=3)
    runtime = make(clock, warmup_requests=1, profile_delay_requests=1, enable_rtc=True, execution_steps=4,
                   steps_before_request=1)
    arm = Arm()
    with pytest.raises(ValueError, match="execution_steps < chunk length - steps_before_request"):
        await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                       pace_control=False)
    assert arm.executed == [] and len(policy.requests) == 1


async def test_sync_mode_executes_execution_steps_then_requests_again():
    clock = FakeClock()
    calls = []

    def policy(frame, request):
        calls.append(request.request_step)
        return step_chunk(request, 10)

    arm = Arm()
    runtime = InferenceRuntime(mode="sync", control_hz=HZ, execution_steps=4, clock=clock)
    for _ in range(10):
        await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                       pace_control=False)
    assert calls == [0, 4, 8] and arm.executed == [float(k) for k in range(10)]


async def test_callback_errors_are_raised_naming_the_callback():
    arm = Arm()

    def broken(*args):
        raise KeyError("boom")

    for name, kwargs in [("observe_fn", dict(observe_fn=broken, act_fn=arm.act,
                                             act_src_fn=lambda f, r: step_chunk(r, 3))),
                         ("act_src_fn", dict(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=broken)),
                         ("act_fn", dict(observe_fn=arm.observe, act_fn=broken,
                                         act_src_fn=lambda f, r: step_chunk(r, 3)))]:
        runtime = make(FakeClock(), mode="sync")
        with pytest.raises(PolicyCallbackError, match=f"^{name} raised KeyError") as info:
            await run_step(runtime=runtime, pace_control=False, **kwargs)
        assert info.value.callback == name and isinstance(info.value.__cause__, KeyError)


async def test_pure_inference_with_a_frame_calls_no_act_fn():
    arm = Arm()
    frame = Frame(state={"q": np.ones(7)})
    runtime = make(FakeClock(), mode="sync")
    result = await run_step(frame=frame, act_fn=arm.act, act_src_fn=lambda f, r: step_chunk(r, 3),
                            runtime=runtime, execute_action=False, pace_control=False)
    assert value(result.raw_action) == 0.0 and arm.executed == []
    assert result.frame is frame and frame.sequence_id == 0 and frame.timestamp_ns is not None
    plain = await run_step(frame={"state": {"q": np.ones(7)}}, act_src_fn=lambda f, r: step_chunk(r, 3))
    assert value(plain.action) == 0.0


async def test_act_fn_may_return_the_action_it_really_executed():
    def clipping_act(action):
        return Action({"arm": Command("joint_position", np.minimum(action["arm"].value, 0.5))})

    runtime = make(FakeClock(), mode="sync")
    for _ in range(3):
        result = await run_step(observe_fn=Arm().observe, act_fn=clipping_act,
                                act_src_fn=lambda f, r: step_chunk(r, 5), runtime=runtime, pace_control=False)
    assert value(result.raw_action) == 2.0 and value(result.action) == 0.5


async def test_a_reply_older_than_max_action_age_is_rejected():
    clock = FakeClock()

    async def slow(frame, request):
        await asyncio.sleep(0.05)
        return step_chunk(request, 5)

    runtime = make(clock, mode="sync", max_action_age_s=0.01)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_step(observe_fn=Arm().observe, act_src_fn=slow, runtime=runtime,
                                        pace_control=False), 0.5)
    assert runtime.stats.rejected >= 2 and runtime.stats.integrated == 0


async def test_reset_clears_the_buffer_keeps_the_latency_and_does_not_bootstrap_again():
    clock = FakeClock()
    policy = StepPolicy(clock, n=10, latency=2, immediate=3, durations=[0.1, 0.2, 0.2])
    arm = Arm()
    runtime = make(clock, warmup_requests=1, profile_delay_requests=2)
    await drive(runtime, policy, arm, 6)
    latency = runtime.scheduler.latency_steps
    runtime.reset()
    assert runtime.scheduler.executed == 0 and runtime.scheduler.remaining_count == 0
    assert runtime.scheduler.latency_steps == latency
    before = len(policy.requests)
    policy.immediate = before + 1  # the new episode's first request replies at once
    result = await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                            pace_control=False)
    assert len(policy.requests) == before + 1 and value(result.raw_action) == 0.0
    assert runtime.stats.bootstrap_requests == 3


async def test_paced_steps_follow_the_control_rate():
    runtime = InferenceRuntime(mode="async", control_hz=50.0, warmup_requests=0, profile_delay_requests=0)

    async def policy(frame, request):
        await asyncio.sleep(0.03)
        return step_chunk(request, 10)

    arm = Arm()
    start = time.monotonic()
    for _ in range(15):
        await run_step(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 1.5  # 15 ticks of 20 ms after a 30 ms first request
    assert arm.executed == [float(k) for k in range(15)]
    runtime.close()


def test_the_sync_twin_runs_async_mode_in_a_worker_thread():
    clock = FakeClock()
    gate = threading.Event()
    threads = []

    def policy(frame, request):
        threads.append(threading.current_thread().name)
        if request.request_step > 0:
            gate.wait(1.0)
        return step_chunk(request, 6)

    arm = Arm()
    runtime = InferenceRuntime(mode="async", control_hz=HZ, warmup_requests=0, profile_delay_requests=0,
                               steps_before_request=1, clock=clock)
    for k in range(12):
        run_step_sync(observe_fn=arm.observe, act_fn=arm.act, act_src_fn=policy, runtime=runtime,
                      pace_control=False)
        clock.advance(1.0 / HZ)
        if k % 3 == 2:
            gate.set()
            time.sleep(0.02)
            gate.clear()
    runtime.close()
    assert arm.executed[:6] == [float(k) for k in range(6)]
    assert any(name.startswith("aiofranka-policy") for name in threads[1:])
    assert all(a == b or a == arm.executed[i - 1] for i, (a, b) in enumerate(zip(arm.executed, range(12))) if i)


def test_the_sync_twin_serves_a_session_policy():
    import aiofranka

    class Point:
        def reset(self):
            self.x = np.zeros(7)
            self.seen = []

        def observe(self):
            return {"q": self.x}

        def act(self, action):
            self.seen.append(float(action[0]))
            self.x = action

    runtime = InferenceRuntime(mode="async", control_hz=100.0, warmup_requests=0, profile_delay_requests=0,
                               steps_before_request=3)

    def chunked(frame, request):
        time.sleep(0.005)
        return step_chunk(request, 8)

    def policy(obs):
        result = run_step_sync(frame=Frame(state=obs), act_src_fn=chunked, runtime=runtime, execute_action=False,
                               pace_control=False)
        action = result.raw_action or runtime.scheduler.last_executed
        return action["arm"].value

    point = Point()
    aiofranka.run(point, policy, rate_hz=100, duration=0.5, warmup_s=0.0)
    runtime.close()
    assert len(point.seen) > 20
    # Every executed value is the step it was meant for, or the last one held while starved.
    steps = [v for i, v in enumerate(point.seen) if i == 0 or v != point.seen[i - 1]]
    assert steps == [float(k) for k in range(len(steps))]
    assert runtime.stats.integrated >= 3
