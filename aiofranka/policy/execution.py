"""Built-in observers and executors: a Frame from the Controller, actions to the Controller and the gripper.

:class:`ControllerObserver` makes a :class:`~aiofranka.policy.Frame` of the
Controller's state (q, dq, ee pose, tau_ext, gripper width) and any cameras.
:class:`ControllerExecutor` plays each integrated chunk on the Controller at
1 kHz (:mod:`aiofranka.policy.interpolation` makes the rows, ``Controller.play``
follows them) and sends ``gripper_*`` commands to a gripper, held between
changes. :class:`GripperExecutor` is the gripper part alone. See
docs/policies.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..loop.trajectory import TargetRows
from . import interpolation
from .contract import (
    CARTESIAN_POSE, CARTESIAN_POSE_DELTA, EEF_ACTIVATION, GRIPPER_OPEN_CLOSE, GRIPPER_POSITION,
    GRIPPER_POSITION_DELTA, GRIPPER_VELOCITY, JOINT_POSITION, JOINT_POSITION_DELTA, Action, Command, Frame,
)

__all__ = ["ChunkExecutor", "ControllerExecutor", "ControllerObserver", "GripperExecutor", "Played", "commanded_path"]

_JOINT_KINDS = (JOINT_POSITION, JOINT_POSITION_DELTA)
_POSE_KINDS = (CARTESIAN_POSE, CARTESIAN_POSE_DELTA)
_GRIPPER_KINDS = (GRIPPER_POSITION, GRIPPER_POSITION_DELTA, GRIPPER_VELOCITY, GRIPPER_OPEN_CLOSE, EEF_ACTIVATION)


@runtime_checkable
class ChunkExecutor(Protocol):
    """An executor that plays whole chunks itself (at its own rate) instead of one action per control step.

    The runtime calls ``bind(control_hz)`` once, ``resolve_chunk(chunk, frame)``
    on each reply before blending (deltas made absolute), ``play_chunk(integration)``
    when a chunk becomes the buffer, ``executed_steps()`` to learn how far the
    arm got, and the executor itself once per control step with that step's action.
    """

    def bind(self, control_hz: float, interpolation_mode: str = "cubic") -> None: ...

    def resolve_chunk(self, chunk: list[Action], frame: Frame) -> list[Action]: ...

    def play_chunk(self, integration) -> None: ...

    def executed_steps(self) -> int: ...


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class ControllerObserver:
    """Observes the Controller: ``await observer()`` returns a :class:`~aiofranka.policy.Frame`.

    ``frame.state``: ``q``, ``dq`` (7,), ``ee`` (4, 4), ``tau_ext`` (7,), and
    ``gripper_width`` (1,) when a ``gripper`` is given (read from
    ``gripper.state.width``). ``images``: one entry per camera, ``cameras`` being
    ``{name: callable}`` returning an array (or an awaitable of one: wrap a
    blocking camera read with ``asyncify``). ``task`` is copied into every frame.
    ``meta["robot_time_ms"]`` is the robot's clock at the state.

    Example::

        observer = ControllerObserver(controller, cameras={"wrist": asyncify(camera.read)},
                                      task={"instruction": "pick the cube"})
        frame = await observer()
    """

    def __init__(self, controller, *, cameras: Mapping[str, Callable[[], Any]] | None = None, gripper=None,
                 task: Mapping[str, Any] | None = None) -> None:
        self.controller = controller
        self.cameras = dict(cameras or {})
        for name, camera in self.cameras.items():
            if not callable(camera):
                raise TypeError(f"cameras[{name!r}] must be callable, got {type(camera).__name__}")
        self.gripper = gripper
        self.task = dict(task or {})

    async def __call__(self) -> Frame:
        state = self.controller.state
        images = {name: await _maybe_await(camera()) for name, camera in self.cameras.items()}
        values = {"q": state.q, "dq": state.dq, "ee": state.ee, "tau_ext": state.tau_ext}
        if self.gripper is not None:
            values["gripper_width"] = np.array([float(self.gripper.state.width)])
        return Frame(images=images, state=values, task=self.task, meta={"robot_time_ms": int(state.time_ms)})


class GripperExecutor:
    """Sends a target's ``gripper_*`` commands to a gripper, held: a command goes out only when it changes.

    ``gripper`` offers ``await move(width, speed)``, ``await grasp(width, speed,
    force, epsilon_inner, epsilon_outer)`` and ``state.width`` (the Franka Hand,
    ``aiofranka.Gripper``). Kinds: ``gripper_position`` (width, m);
    ``gripper_position_delta`` (made absolute by the runtime against the frame's
    ``gripper_width``); ``gripper_velocity`` (m/s: its sign opens or closes at that
    speed); ``gripper_open_close`` and ``eef_activation`` (above 0.5 grasps with
    ``force``, otherwise opens to ``open_width``). A command is never interpolated.
    While a gripper motion runs, a newer command waits and replaces older waiting
    ones; the Hand's motions block, so they run as tasks and never stall the step.

    Example::

        hand = GripperExecutor(gripper, speed=0.1, force=30.0)
        hand(Action({"gripper": ("gripper_open_close", 1.0)}))   # grasps (once, however often it is repeated)
        await hand.wait_idle()
    """

    def __init__(self, gripper, *, target: str = "gripper", speed: float = 0.1, force: float = 20.0,
                 open_width: float = 0.08, epsilon: float = 0.08) -> None:
        self.gripper = gripper
        self.target = target
        self.speed = float(speed)
        self.force = float(force)
        self.open_width = float(open_width)
        self.epsilon = float(epsilon)
        self._last: tuple | None = None
        self._waiting: tuple | None = None
        self._task: asyncio.Task | None = None
        #: Commands sent to the gripper, and the last error a gripper motion raised.
        self.sent = 0
        self.error: BaseException | None = None

    def _order(self, command: Command) -> tuple:
        value = float(np.asarray(command.value, dtype=float).reshape(-1)[0])
        kind = command.kind
        if kind in (GRIPPER_POSITION, GRIPPER_POSITION_DELTA):
            return ("move", min(max(value, 0.0), self.open_width), self.speed)
        if kind == GRIPPER_VELOCITY:
            if value == 0.0:
                return ("stay",)
            return ("move", self.open_width, min(abs(value), self.speed)) if value > 0 else ("grasp",)
        if value > 0.5:  # open/close, activation
            return ("grasp",)
        return ("move", self.open_width, self.speed)

    def __call__(self, action: Action) -> Command | None:
        """Take this step's command for the target (if any); returns it."""
        command = action.get(self.target)
        if command is None:
            return None
        if command.kind not in _GRIPPER_KINDS:
            raise ValueError(f"target {self.target!r} is a gripper; kind {command.kind!r} is not a gripper kind")
        order = self._order(command)
        if order == ("stay",) or order == self._last or order == self._waiting:
            return command
        if self._task is not None and not self._task.done():
            self._waiting = order
        else:
            self._start(order)
        return command

    def _start(self, order: tuple) -> None:
        self._last = order
        self._waiting = None
        self.sent += 1
        self._task = asyncio.get_running_loop().create_task(self._run(order), name="aiofranka-gripper-command")

    async def _run(self, order: tuple) -> None:
        try:
            if order[0] == "move":
                await self.gripper.move(order[1], order[2])
            else:
                await self.gripper.grasp(0.0, self.speed, self.force, self.epsilon, self.epsilon)
        except Exception as exc:  # noqa: BLE001 - reported through .error; the arm goes on
            self.error = exc
        if self._waiting is not None:
            self._start(self._waiting)

    async def wait_idle(self) -> None:
        """Wait until every command sent has finished."""
        while self._task is not None and not self._task.done():
            await self._task


@dataclasses.dataclass(frozen=True)
class Played:
    """One play handed to the Controller: its rows' ``targets`` ((n, 7) joints or (n, 4, 4) poses) from
    ``start_ms``, for the chunk whose first kept action is for ``first_step``."""

    start_ms: int
    first_step: int
    targets: np.ndarray


def commanded_path(plays: Sequence[Played], start_ms: int, end_ms: int) -> np.ndarray:
    """The target the loop commanded at every robot millisecond from ``start_ms`` to ``end_ms``, rebuilt from
    the plays (each from its ``start_ms`` until the next one's, its last row held): for analysis."""
    times = np.arange(start_ms, end_ms + 1)
    starts = np.array([p.start_ms for p in plays])
    which = np.searchsorted(starts, times, side="right") - 1
    if np.any(which < 0):
        raise ValueError(f"start_ms {start_ms} is before the first play ({starts[0]})")
    out = np.empty((len(times),) + plays[0].targets.shape[1:])
    for index in np.unique(which):
        mask = which == index
        play = plays[index]
        rows = np.minimum(times[mask] - play.start_ms, len(play.targets) - 1)
        out[mask] = play.targets[rows]
    return out


@dataclasses.dataclass(frozen=True)
class _Segment:
    """Where the arm's step clock is along one play: ``x = x_start`` at ``start_ms``, waypoint ``j`` is step ``first_step + j``."""

    start_ms: int
    x_start: float
    first_step: int
    count: int
    period_ms: float

    def position(self, time_ms: int) -> float:
        return min(self.count - 1.0, self.x_start + (time_ms - self.start_ms) / self.period_ms)

    def executed(self, time_ms: int) -> int:
        # Step first_step + j is executed once the target has reached its waypoint.
        return self.first_step + min(self.count, math.floor(self.position(time_ms) + 1e-6) + 1)


class ControllerExecutor:
    """Executes a policy's actions on a Controller: arm chunks at 1 kHz, gripper commands held.

    Commands for ``arm`` (the target name) of kind ``joint_position`` /
    ``joint_position_delta`` are followed in impedance mode, ``cartesian_pose`` /
    ``cartesian_pose_delta`` in osc mode (the controller switches as needed).
    Deltas are made absolute against the frame the chunk was computed from
    (``q``, or ``ee``: the translation is added to the observed position, the
    rotation applied on the left of the observed rotation). Each integrated chunk
    becomes 1 kHz rows (:mod:`aiofranka.policy.interpolation`) starting
    ``lead_ms`` ahead at the target the loop commands then, handed to
    ``Controller.play``. The ``gripper`` target goes to ``gripper`` (a
    :class:`GripperExecutor` is made for it). Other targets raise ``ValueError``.

    ``join_speed`` (rad/s; ``join_speed_cartesian``: m/s and rad/s): a
    switch joins the new chunk within one step, or more when the difference is
    so large that one step would move the target faster than this (after a
    starvation, when the policy has moved on while the arm held).

    ``feed_forward``: also hand the joint path's velocity to the loop as
    ``dq_desired`` (off by default: on the simulator a policy whose chunks jitter
    by ±0.01 rad from step to step drove the arm unstable within seconds with
    the velocity fed forward, through the torque rate limit, and never without
    it; a smooth policy tracks tighter with it).

    Called once per control step with the step's action, it returns the action
    really commanded: the arm's target of that instant, and the gripper command.

    Example::

        executor = ControllerExecutor(controller, gripper=gripper)
        await run_step(observe_fn=ControllerObserver(controller), act_fn=executor,
                       act_src_fn=policy, runtime=runtime)
    """

    #: How far ahead (ms) a new chunk's rows start: the time to make them and hand them over,
    #: in steps of at most ~0.2 ms with the event loop's turns between them.
    LEAD_MS = 8

    def __init__(self, controller, *, arm: str = "arm", gripper=None, gripper_target: str = "gripper",
                 lead_ms: int = LEAD_MS, feed_forward: bool = False, join_speed: float = 0.5,
                 join_speed_cartesian: tuple[float, float] = (0.1, 0.5), **gripper_options: Any) -> None:
        self.controller = controller
        self.feed_forward = bool(feed_forward)
        self.join_speed = float(join_speed)
        self.join_speed_cartesian = (float(join_speed_cartesian[0]), float(join_speed_cartesian[1]))
        self.arm = arm
        self.gripper = (None if gripper is None else
                        GripperExecutor(gripper, target=gripper_target, **gripper_options))
        self.lead_ms = int(lead_ms)
        if self.lead_ms < 1:
            raise ValueError(f"lead_ms must be >= 1, got {lead_ms!r}")
        self.period_ms = 0.0
        self.mode = "cubic"
        self._segments: list[_Segment] = []
        self._joint = True
        #: Every play handed to the Controller (:class:`Played`), kept for analysis when ``record`` is set.
        self.record = False
        self.plays: list[Played] = []

    # -- what the runtime calls -----------------------------------------------------------

    def bind(self, control_hz: float, interpolation_mode: str = "cubic") -> None:
        self.period_ms = 1000.0 / float(control_hz)
        self.mode = interpolation_mode
        # numpy's first pass through these paths costs milliseconds: pay it now, not in a play.
        eye = np.eye(4)
        interpolation.joint_rows(np.zeros(7), np.zeros((2, 7)), -0.5, np.zeros(7), self.period_ms)
        interpolation.pose_rows(eye, np.stack([eye, eye]), -0.5, eye, self.period_ms)
        TargetRows(0, poses=[eye, eye]).check()

    def reset(self) -> None:
        """A new episode: step counting starts again at 0 (the arm keeps its target)."""
        self._segments.clear()

    def now_s(self) -> float:
        """The robot clock (s): the runtime measures latency and paces on it."""
        return self.controller.time_ms / 1000.0

    async def wait_until_s(self, deadline_s: float) -> None:
        """Sleep until the robot clock reaches ``deadline_s``."""
        remaining = deadline_s - self.now_s()
        if remaining > 0:
            await self.controller.wait(remaining)

    def held_cycles(self) -> int:
        """1 kHz cycles the Controller held the last row because the rows had run out (since its start)."""
        return self.controller.playback.held_cycles

    def executed_steps(self) -> int:
        """Control steps executed so far this episode, read off the robot clock."""
        if not self._segments:
            return 0
        now = self.controller.time_ms
        segment = self._segments[-1]
        if now < segment.start_ms and len(self._segments) > 1:
            segment = self._segments[-2]
        return segment.executed(now)

    def time_of_step(self, step: int) -> float | None:
        """When (robot clock, s) the waypoint of ``step`` is reached, if the buffer holds it; else ``None``.

        In SYNC mode (and for the first chunk) the answer is ``None``: the
        rows of the chunk being requested do not exist yet.
        """
        if not self._segments:
            return None
        segment = self._segments[-1]
        x = step - segment.first_step
        if x > segment.count - 1:
            return None
        return (segment.start_ms + (x - segment.x_start) * self.period_ms) / 1000.0

    def resolve_chunk(self, chunk: Sequence[Action], frame: Frame) -> list[Action]:
        """Deltas made absolute against ``frame`` (before any blending); other targets checked."""
        resolved = []
        for action in chunk:
            commands = dict(action.commands)
            for target, command in action.commands.items():
                if target == self.arm:
                    commands[target] = self._absolute_arm(command, frame)
                elif self.gripper is not None and target == self.gripper.target:
                    if command.kind not in _GRIPPER_KINDS:
                        raise ValueError(f"target {target!r} is the gripper; kind {command.kind!r} is not a "
                                         f"gripper kind")
                    if command.kind == GRIPPER_POSITION_DELTA:
                        width = _state(frame, "gripper_width", target)
                        commands[target] = Command(GRIPPER_POSITION, float(width.reshape(-1)[0]) + command.value,
                                                   command.ref_frame, command.meta)
                else:
                    raise ValueError(f"ControllerExecutor drives target {self.arm!r}"
                                     + (f" and {self.gripper.target!r}" if self.gripper else "")
                                     + f"; the policy sent a command for {target!r}")
            resolved.append(Action(commands))
        return resolved

    def _absolute_arm(self, command: Command, frame: Frame) -> Command:
        kind, value = command.kind, command.value
        if kind in (JOINT_POSITION, JOINT_POSITION_DELTA):
            if value.shape != (7,):
                raise ValueError(f"target {self.arm!r}: {kind} must have shape (7,), got {value.shape}")
            if kind == JOINT_POSITION_DELTA:
                value = _state(frame, "q", self.arm) + value
            return Command(JOINT_POSITION, value, command.ref_frame, command.meta)
        if kind in (CARTESIAN_POSE, CARTESIAN_POSE_DELTA):
            if value.shape != (4, 4):
                raise ValueError(f"target {self.arm!r}: {kind} must be a 4x4 transform, got {value.shape}")
            if kind == CARTESIAN_POSE_DELTA:
                ee = _state(frame, "ee", self.arm)
                pose = np.eye(4)
                pose[:3, :3] = value[:3, :3] @ ee[:3, :3]
                pose[:3, 3] = ee[:3, 3] + value[:3, 3]
                value = pose
            return Command(CARTESIAN_POSE, value, command.ref_frame, command.meta)
        raise ValueError(f"target {self.arm!r} takes joint_position, joint_position_delta, cartesian_pose or "
                         f"cartesian_pose_delta; the policy sent {kind!r}")

    async def play_chunk(self, integration) -> None:
        """Make 1 kHz rows of the integrated chunk and hand them to the Controller.

        The work is split into pieces of a fraction of a millisecond with the
        event loop's turns between them, so it never stalls the loop; the rows
        start ``lead_ms`` ahead, and are made again from later if the loop got
        there first.
        """
        commands = [a.get(self.arm) for a in integration.actions]
        if any(c is None for c in commands):
            if all(c is None for c in commands):
                return  # a gripper-only chunk
            raise ValueError(f"every action of a chunk must command {self.arm!r} when one does")
        joint = commands[0].kind == JOINT_POSITION
        if any((c.kind == JOINT_POSITION) != joint for c in commands):
            raise ValueError(f"a chunk must not mix joint and pose commands for {self.arm!r}")
        controller = self.controller
        if joint and controller.mode != "impedance":
            controller.switch("impedance")
        elif not joint and controller.mode != "osc":
            controller.switch("osc")
        if joint != self._joint:
            self._segments.clear()  # a new kind of path: start it from the commanded target
            self._joint = joint
        waypoints = np.array([c.value for c in commands])
        first_step = integration.first_step
        segments = list(self._segments)
        for _ in range(3):
            start_ms = controller.time_ms + self.lead_ms
            current = controller.target_at(start_ms, joint=joint)
            velocity = None
            if joint:  # the commanded path's velocity there (per second), from its neighbours
                velocity = (controller.target_at(start_ms + 1) - controller.target_at(start_ms - 1)) * 500.0
            x_start = self._x_start(start_ms, first_step)
            previous = integration.previous.get(self.arm) if integration.previous is not None else None
            previous = current if previous is None or previous.kind != commands[0].kind else previous.value
            if joint:
                positions, velocities = interpolation.joint_rows(previous, waypoints, x_start, current,
                                                                 self.period_ms, mode=self.mode,
                                                                 current_velocity=velocity,
                                                                 join_speed=self.join_speed)
                await asyncio.sleep(0)
                rows = TargetRows(start_ms, positions=positions, velocities=velocities if self.feed_forward else None)
            else:
                poses = interpolation.pose_rows(previous, waypoints, x_start, current, self.period_ms,
                                                hold=self.mode == "hold", join_speed=self.join_speed_cartesian)
                await asyncio.sleep(0)
                rows = TargetRows(start_ms, poses=poses)
            await asyncio.sleep(0)
            rows.check()
            await asyncio.sleep(0)
            if controller.time_ms + 1 < start_ms and self._segments_unchanged(segments):
                break  # still ahead of the loop: hand it over (else compute again from later)
        controller.play(rows)
        segment = _Segment(start_ms, x_start, first_step, len(waypoints), self.period_ms)
        self._segments[:] = self._segments[-1:] + [segment]
        if self.record:
            self.plays.append(Played(start_ms, first_step, rows.positions if joint else rows.poses))

    def _segments_unchanged(self, segments: list) -> bool:
        if self._segments != segments:
            raise RuntimeError("ControllerExecutor.play_chunk was called again before the previous call returned")
        return True

    def _x_start(self, start_ms: int, first_step: int) -> float:
        """Where the step clock will be at ``start_ms``, relative to ``first_step`` (-1: at the previous waypoint)."""
        if not self._segments:
            return -1.0
        segment = self._segments[-1]
        if start_ms < segment.start_ms and len(self._segments) > 1:
            segment = self._segments[-2]
        absolute = segment.first_step + segment.position(start_ms)
        # Never behind the previous waypoint: a starved arm resumes from it.
        return max(-1.0, absolute - first_step)

    def __call__(self, action: Action | None) -> Action:
        """This step's action: gripper commands go out; returns what is commanded now."""
        commands = {}
        if action is not None and self.gripper is not None:
            sent = self.gripper(action)
            if sent is not None:
                commands[self.gripper.target] = sent
        now = self.controller.time_ms + 1
        if self._joint:
            commands[self.arm] = Command(JOINT_POSITION, self.controller.target_at(now, joint=True))
        else:
            commands[self.arm] = Command(CARTESIAN_POSE, self.controller.target_at(now, joint=False))
        return Action(commands)


def _state(frame: Frame, key: str, target: str) -> np.ndarray:
    try:
        return np.asarray(frame.state[key], dtype=float)
    except KeyError:
        raise ValueError(f"a delta command for {target!r} needs frame.state[{key!r}] (the value it is relative to); "
                         f"the frame has {sorted(frame.state)}") from None
