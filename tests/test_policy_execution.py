"""The executors' pure logic: gripper commands held and routed (a fake gripper), deltas made absolute,
and the step clock along the rows (no robot)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from aiofranka.policy import Action, Command, Frame
from aiofranka.policy.execution import ControllerExecutor, GripperExecutor, _Segment


class FakeGripper:
    """The Franka Hand's API (aiofranka.Gripper): async move/grasp that take a while, state.width."""

    def __init__(self, seconds: float = 0.01, fail: bool = False):
        self.calls = []
        self.seconds = seconds
        self.fail = fail
        self.state = type("State", (), {"width": 0.05})()

    async def move(self, width, speed):
        self.calls.append(("move", round(width, 4), round(speed, 4)))
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("gripper fault")
        self.state.width = width

    async def grasp(self, width, speed, force, epsilon_inner, epsilon_outer):
        self.calls.append(("grasp", force))
        await asyncio.sleep(self.seconds)


def grip(kind, value):
    return Action({"gripper": Command(kind, value)})


async def test_gripper_commands_are_held_and_sent_only_when_they_change():
    hand = FakeGripper()
    executor = GripperExecutor(hand, speed=0.1, force=30.0, open_width=0.08)
    for value in (0.0, 0.0, 0.0, 1.0, 1.0):
        executor(grip("gripper_open_close", value))
        await executor.wait_idle()
    assert hand.calls == [("move", 0.08, 0.1), ("grasp", 30.0)]
    executor(grip("gripper_position", 0.03))
    executor(grip("gripper_position", 0.03))
    await executor.wait_idle()
    assert hand.calls[-1] == ("move", 0.03, 0.1) and executor.sent == 3


async def test_a_newer_command_waits_for_the_running_one_and_replaces_older_waiting_ones():
    hand = FakeGripper(seconds=0.05)
    executor = GripperExecutor(hand)
    executor(grip("gripper_position", 0.01))  # runs
    executor(grip("gripper_position", 0.02))  # waits...
    executor(grip("gripper_position", 0.04))  # ...and is replaced
    await asyncio.sleep(0)
    assert hand.calls == [("move", 0.01, 0.1)]
    await executor.wait_idle()
    assert hand.calls == [("move", 0.01, 0.1), ("move", 0.04, 0.1)]


async def test_velocity_and_activation_kinds_map_onto_moves_and_grasps():
    hand = FakeGripper()
    executor = GripperExecutor(hand, speed=0.1, open_width=0.08)
    for action in (grip("gripper_velocity", 0.05), grip("gripper_velocity", 0.0), grip("gripper_velocity", -0.2),
                   grip("eef_activation", 0.0), grip("eef_activation", 1.0)):
        executor(action)
        await executor.wait_idle()
    assert hand.calls == [("move", 0.08, 0.05), ("grasp", 20.0), ("move", 0.08, 0.1), ("grasp", 20.0)]
    with pytest.raises(ValueError, match="not a gripper kind"):
        executor(Action({"gripper": Command("joint_position", np.zeros(7))}))
    assert executor(Action({"arm": Command("joint_position", np.zeros(7))})) is None


async def test_a_gripper_fault_is_kept_and_the_arm_goes_on():
    hand = FakeGripper(fail=True)
    executor = GripperExecutor(hand)
    executor(grip("gripper_position", 0.02))
    await executor.wait_idle()
    assert isinstance(executor.error, RuntimeError)


def test_deltas_are_made_absolute_against_the_frame():
    executor = ControllerExecutor(controller=None, gripper=FakeGripper())
    ee = np.eye(4)
    ee[:3, 3] = [0.4, 0.0, 0.5]
    frame = Frame(state={"q": np.full(7, 0.1), "ee": ee, "gripper_width": [0.03]})
    turn = np.eye(4)
    turn[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    turn[:3, 3] = [0.0, 0.0, 0.01]
    chunk = [Action({"arm": ("joint_position_delta", np.full(7, 0.2)), "gripper": ("gripper_position_delta", 0.01)}),
             Action({"arm": ("cartesian_pose_delta", turn), "gripper": ("gripper_open_close", 1.0)})]
    joint, pose = executor.resolve_chunk(chunk, frame)
    assert joint["arm"].kind == "joint_position" and joint["arm"].value == pytest.approx(np.full(7, 0.3))
    assert joint["gripper"].kind == "gripper_position" and float(joint["gripper"].value) == pytest.approx(0.04)
    assert pose["arm"].kind == "cartesian_pose"
    assert pose["arm"].value[:3, 3] == pytest.approx([0.4, 0.0, 0.51])  # translation added, not rotated
    assert pose["arm"].value[:3, :3] == pytest.approx(turn[:3, :3])
    with pytest.raises(ValueError, match="takes joint_position"):
        executor.resolve_chunk([Action({"arm": ("joint_velocity", np.zeros(7))})], frame)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        executor.resolve_chunk([Action({"arm": ("joint_position", np.zeros(6))})], frame)


def test_the_step_clock_along_the_rows():
    # Rows start at robot ms 1000 half-way between waypoint -1 and 0; one step is 25 ms.
    segment = _Segment(start_ms=1000, x_start=-0.5, first_step=40, count=4, period_ms=25.0)
    assert segment.executed(1000) == 40  # heading for the waypoint of step 40
    assert segment.executed(1012) == 40
    assert segment.executed(1013) == 41  # reached it (x = 0.02)
    assert segment.executed(1013 + 25 * 3) == 44  # the last waypoint: all executed
    assert segment.executed(5000) == 44  # held there: never beyond
    executor = ControllerExecutor(controller=None)
    executor.period_ms = 25.0
    executor._segments = [segment]
    assert executor.time_of_step(40) == pytest.approx(1.0125)
    assert executor.time_of_step(43) == pytest.approx(1.0875)
    assert executor.time_of_step(44) is None  # beyond the buffer: unknown


def test_the_commanded_path_is_rebuilt_from_the_plays():
    from aiofranka.policy.execution import Played, commanded_path

    first = Played(100, 0, np.arange(10, dtype=float)[:, None] * np.ones(7))  # 100..109
    second = Played(105, 2, 50.0 + np.arange(3, dtype=float)[:, None] * np.ones(7))  # 105..107, then held
    path = commanded_path([first, second], 100, 110)
    assert list(path[:, 0]) == [0, 1, 2, 3, 4, 50, 51, 52, 52, 52, 52]
    with pytest.raises(ValueError, match="before the first play"):
        commanded_path([first], 99, 100)
