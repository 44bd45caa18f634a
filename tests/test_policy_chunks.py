"""The chunk-scheduling rules, one test each, on a fake clock with a fake policy.

The fake policy's chunk values are the step indices they are meant for, so
continuity is exact: the first action executed after a switch must hold the
index of the step it executes at.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiofranka.pacing import FakeClock
from aiofranka.policy.chunks import ChunkScheduler
from aiofranka.policy.contract import Action, ChunkRequest, Command, Frame, check_kind

PERIOD = 0.1  # 10 Hz


def step_chunk(request: ChunkRequest, n: int = 10, *, offset: float = 0.0, gripper: float | None = None):
    """A chunk whose action i holds the step it is meant for (request_step + i) in every joint."""
    chunk = []
    for i in range(n):
        commands = {"arm": Command("joint_position", np.full(7, request.request_step + i + offset))}
        if gripper is not None:
            commands["gripper"] = Command("gripper_position", [gripper])
        chunk.append(Action(commands))
    return chunk


def value(action: Action, target: str = "arm") -> float:
    return float(action[target].value.flat[0])


def make(clock=None, **options) -> ChunkScheduler:
    return ChunkScheduler(control_hz=1.0 / PERIOD, clock=clock or FakeClock(), **options)


def start(s: ChunkScheduler, n: int = 10) -> None:
    """The first chunk, for step 0."""
    s.integrate(step_chunk(s.make_request(), n))


# -- the contract ------------------------------------------------------------------------

def test_an_unknown_kind_names_the_target_and_the_kind():
    with pytest.raises(ValueError, match=r"'arm'.*'joint_angle'"):
        Action({"arm": Command("joint_angle", np.zeros(7))})
    with pytest.raises(ValueError, match=r"'gripper'.*'custom:'"):
        Action({"gripper": ("custom:", 1.0)})
    assert check_kind("custom:wrist_camera_tilt", "x") == "custom:wrist_camera_tilt"


def test_values_become_numpy_arrays_and_frames_take_mappings():
    action = Action({"arm": ("joint_position", [0, 1, 2, 3, 4, 5, 6]), "gripper": {"kind": "gripper_open_close",
                                                                                   "value": 1}})
    assert isinstance(action["arm"].value, np.ndarray) and action["arm"].value.dtype == float
    assert action["gripper"].value.shape == ()
    frame = Frame.coerce({"state": {"q": [0.0] * 7}, "images": {"wrist": np.zeros((4, 4, 3), np.uint8)}})
    assert frame.state["q"].shape == (7,) and frame.images["wrist"].dtype == np.uint8
    with pytest.raises(ValueError, match="unknown Frame fields"):
        Frame.coerce({"joints": [0.0]})
    with pytest.raises(ValueError, match="timestamp_ns"):
        Frame(timestamp_ns=-1)


# -- one request in flight, and when the next one leaves -----------------------------------

def test_exactly_one_request_in_flight():
    s = make()
    s.make_request()
    assert not s.should_request()
    with pytest.raises(RuntimeError, match="exactly one"):
        s.make_request()


def test_next_request_leaves_steps_before_request_executed_steps_after_integration():
    s = make(steps_before_request=3)
    start(s)
    waits = []
    for _ in range(5):
        waits.append(s.should_request())
        s.pop()
    assert waits == [False, False, False, True, True]


def test_starved_ticks_do_not_count_as_executed_steps():
    s = make(steps_before_request=2)
    start(s, n=3)
    request = None
    s.pop()
    s.pop()
    request = s.make_request()
    s.pop()          # the last buffered step
    for _ in range(4):
        assert s.pop() is None  # starved: counted, nothing executed
    assert s.executed == 3 and s.starved_ticks == 4
    s.integrate(step_chunk(request, 3))
    assert value(s.pop()) == 3.0  # one step was executed since the request, not five ticks


# -- stale prefix, rejection, starvation ------------------------------------------------------

def test_stale_prefix_is_dropped_by_executed_step_count():
    clock = FakeClock()
    s = make(clock)
    start(s)
    for _ in range(5):
        s.pop()
    request = s.make_request()
    assert request.request_step == 5
    for _ in range(3):
        s.pop()
    clock.advance(30.0)  # wall time is irrelevant: only the three executed steps are stale
    integration = s.integrate(step_chunk(request, 10, offset=100.0))
    assert integration.stale == 3 and integration.first_step == 8
    assert value(integration.previous) == 107.0
    assert [value(s.pop()) for _ in range(3)] == [108.0, 109.0, 110.0]  # the current step's action first
    assert s.stale_steps_dropped == 3


def test_a_reply_as_old_as_its_length_is_rejected_and_counted():
    s = make()
    start(s, n=4)
    request = s.make_request()
    for _ in range(4):
        s.pop()
    assert s.integrate(step_chunk(request, 4, offset=100.0)) is None
    assert s.rejected == 1 and s.integrated == 1 and s.stale_steps_dropped == 4
    assert s.in_flight is None and s.should_request()


def test_starvation_holds_the_last_action_and_never_raises():
    s = make()
    start(s, n=2)
    s.pop()
    last = s.pop()
    for _ in range(3):
        assert s.pop() is None
    assert s.last_executed is last and s.starved_ticks == 3
    s.advance_to(100)  # an executor past the buffer: clamped, nothing raised
    assert s.executed == 2


# -- latency ----------------------------------------------------------------------------------------

def test_latency_is_an_ema_in_control_steps():
    clock = FakeClock()
    s = make(clock, latency_ema_beta=0.5)
    request = s.make_request()
    clock.advance(0.25)
    s.integrate(step_chunk(request))
    assert s.latency_steps == pytest.approx(2.5)
    request = s.make_request()
    clock.advance(0.45)
    s.integrate(step_chunk(request))
    assert s.latency_steps == pytest.approx(0.5 * 2.5 + 0.5 * 4.5)
    assert s.latency_hint() == 4
    assert s.make_request().latency_steps == 4


def test_latency_steps_offset_shifts_the_hint_not_the_estimate():
    clock = FakeClock()
    s = make(clock, latency_steps_offset=2)
    request = s.make_request()
    clock.advance(0.1)
    s.integrate(step_chunk(request))
    assert s.latency_steps == pytest.approx(1.0) and s.latency_hint() == 3
    assert make(clock, latency_steps_offset=-5).latency_hint() == 0


def test_reset_clears_the_buffer_and_keeps_the_latency_estimate():
    clock = FakeClock()
    s = make(clock)
    request = s.make_request()
    clock.advance(0.3)
    s.integrate(step_chunk(request))
    s.pop()
    s.make_request()
    s.reset()
    assert s.executed == 0 and s.remaining_count == 0 and s.in_flight is None
    assert s.latency_steps == pytest.approx(3.0) and s.chunk_len == 10


# -- the chunk length ---------------------------------------------------------------------------------

def test_chunk_length_is_locked_after_the_first_chunk():
    s = make()
    start(s, n=10)
    request = s.make_request()
    with pytest.raises(ValueError, match=r"act_src_fn returned a chunk of 8 actions; the first chunk had 10"):
        s.integrate(step_chunk(request, 8))


# -- blending ---------------------------------------------------------------------------------------------

def blend_setup(weight, *, launch_steps: int = 0, wait: int = 0, gripper: bool = False):
    s = make(ensemble_weight=weight)
    first = s.make_request()
    s.integrate(step_chunk(first, 10, gripper=0.0 if gripper else None))
    for _ in range(launch_steps):
        s.pop()
    request = s.make_request()
    for _ in range(wait):
        s.pop()
    return s, request


def test_a_scalar_weight_blends_the_aligned_overlap_with_the_launch_time_buffer():
    s, request = blend_setup(0.25, launch_steps=2, wait=1)
    integration = s.integrate(step_chunk(request, 10, offset=4.0))
    # Old buffer at launch: steps 2..9 (values 2..9); new: 6..15 for the same steps; one step stale.
    got = [value(a) for a in integration.actions]
    expected = [0.75 * k + 0.25 * (k + 4.0) for k in range(3, 10)] + [14.0, 15.0]
    assert got == pytest.approx(expected)
    assert integration.blended == 7 and s.blended_steps == 7


def test_a_low_high_weight_ramps_from_the_earliest_to_the_latest_overlapping_step():
    s, request = blend_setup((0.2, 0.8), launch_steps=7)
    integration = s.integrate(step_chunk(request, 10, offset=10.0))
    # Overlap of 3 steps (7, 8, 9): weights 0.2, 0.5, 0.8 of the new chunk.
    got = [value(a) for a in integration.actions[:4]]
    assert got == pytest.approx([7 + 0.2 * 10, 8 + 0.5 * 10, 9 + 0.8 * 10, 20.0])


def test_a_one_step_overlap_uses_the_low_weight():
    s, request = blend_setup((0.2, 0.8), launch_steps=9)
    integration = s.integrate(step_chunk(request, 10, offset=10.0))
    assert value(integration.actions[0]) == pytest.approx(9 + 0.2 * 10)


def test_gripper_commands_are_never_blended():
    s, request = blend_setup(0.5, launch_steps=5, gripper=True)
    integration = s.integrate(step_chunk(request, 10, offset=2.0, gripper=0.08))
    assert value(integration.actions[0]) == pytest.approx(6.0)  # the arm is blended
    assert [value(a, "gripper") for a in integration.actions] == [0.08] * 10


def test_actions_of_another_layout_are_not_blended():
    s, request = blend_setup(0.5, launch_steps=5)
    reply = [Action({"arm": Command("joint_position", np.full(7, 50.0 + i)), "gripper": ("gripper_position", 0.0)})
             for i in range(10)]
    integration = s.integrate(reply)
    assert value(integration.actions[0]) == 50.0 and integration.blended == 0


def test_poses_are_blended_on_se3():
    s = make(ensemble_weight=0.5)
    turn = np.eye(4)
    turn[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    turn[:3, 3] = [0.2, 0.0, 0.0]
    s.make_request()
    s.integrate([Action.single("arm", "cartesian_pose", np.eye(4))] * 4)
    request = s.make_request()
    integration = s.integrate([Action.single("arm", "cartesian_pose", turn)] * 4)
    pose = integration.actions[0]["arm"].value
    half = np.deg2rad(45)
    assert pose[:3, :3] == pytest.approx(np.array([[math.cos(half), -math.sin(half), 0],
                                                   [math.sin(half), math.cos(half), 0], [0, 0, 1]]))
    assert pose[:3, 3] == pytest.approx([0.1, 0.0, 0.0])
    assert request.request_step == 0


def test_ensemble_weight_is_checked_naming_it():
    with pytest.raises(ValueError, match="ensemble_weight"):
        make(ensemble_weight=1.5)
    with pytest.raises(ValueError, match="ensemble_weight"):
        make(ensemble_weight=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="steps_before_request"):
        make(steps_before_request=-1)


# -- RTC hints -------------------------------------------------------------------------------------------

def test_rtc_hints_pad_the_window_and_clamp_the_delay():
    clock = FakeClock()
    s = make(clock, enable_rtc=True, execution_steps=3)
    request = s.make_request()
    clock.advance(0.5)  # 5 steps of latency
    s.integrate(step_chunk(request, 6))
    s.pop()
    with pytest.warns(RuntimeWarning, match="exceeds execution_steps"):
        hinted = s.make_request()
    assert [value(a) for a in hinted.prev_action_chunk] == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert hinted.execute_horizon == 3 and hinted.inference_delay == 3 and hinted.latency_steps == 5
    assert hinted.rtc


def test_rtc_inference_delay_is_at_least_one():
    s = make(enable_rtc=True, execution_steps=3, latency_steps_offset=-10)
    start(s, n=6)
    assert s.make_request().inference_delay == 1


def test_rtc_window_constraint_is_checked_on_the_first_chunk():
    s = make(enable_rtc=True, execution_steps=4, steps_before_request=2)
    request = s.make_request()
    with pytest.raises(ValueError, match=r"execution_steps < chunk length - steps_before_request"):
        s.integrate(step_chunk(request, 6))
    with pytest.raises(ValueError, match="needs execution_steps"):
        make(enable_rtc=True)


def test_synchronous_truncation_keeps_execution_steps_actions():
    s = make(execution_steps=4, truncate=True)
    start(s, n=10)
    popped = [s.pop() for _ in range(5)]
    assert [value(a) for a in popped[:4]] == [0.0, 1.0, 2.0, 3.0] and popped[4] is None
    assert s.executed == 4 and s.starved_ticks == 1
