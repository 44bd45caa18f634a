"""The data a policy sees and returns: :class:`Frame`, :class:`Action`, :class:`Command`, :class:`ChunkRequest`.

A policy is ``act_src_fn(frame, request) -> Action | list[Action]`` (or an
awaitable of it): one action, or a chunk of actions for consecutive control
steps. Values become numpy arrays; a command's ``kind`` is one of
:data:`BUILTIN_KINDS` or ``"custom:<name>"``. See docs/policies.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "Action",
    "BUILTIN_KINDS",
    "BLENDABLE_KINDS",
    "CARTESIAN_POSE",
    "CARTESIAN_POSE_DELTA",
    "CARTESIAN_TWIST",
    "ChunkRequest",
    "Command",
    "EEF_ACTIVATION",
    "Frame",
    "GRIPPER_KINDS",
    "GRIPPER_OPEN_CLOSE",
    "GRIPPER_POSITION",
    "GRIPPER_POSITION_DELTA",
    "GRIPPER_VELOCITY",
    "JOINT_POSITION",
    "JOINT_POSITION_DELTA",
    "JOINT_VELOCITY",
    "check_kind",
    "normalize_chunk",
]

JOINT_POSITION = "joint_position"
JOINT_POSITION_DELTA = "joint_position_delta"
JOINT_VELOCITY = "joint_velocity"
CARTESIAN_POSE = "cartesian_pose"
CARTESIAN_POSE_DELTA = "cartesian_pose_delta"
CARTESIAN_TWIST = "cartesian_twist"
GRIPPER_POSITION = "gripper_position"
GRIPPER_POSITION_DELTA = "gripper_position_delta"
GRIPPER_VELOCITY = "gripper_velocity"
GRIPPER_OPEN_CLOSE = "gripper_open_close"
EEF_ACTIVATION = "eef_activation"

#: The kinds every runtime understands; anything else must be ``"custom:<name>"``.
BUILTIN_KINDS = (
    JOINT_POSITION, JOINT_POSITION_DELTA, JOINT_VELOCITY,
    CARTESIAN_POSE, CARTESIAN_POSE_DELTA, CARTESIAN_TWIST,
    GRIPPER_POSITION, GRIPPER_POSITION_DELTA, GRIPPER_VELOCITY, GRIPPER_OPEN_CLOSE,
    EEF_ACTIVATION,
)
#: Kinds that are held, never blended or interpolated: an averaged open/close is meaningless.
GRIPPER_KINDS = frozenset({GRIPPER_POSITION, GRIPPER_POSITION_DELTA, GRIPPER_VELOCITY, GRIPPER_OPEN_CLOSE,
                           EEF_ACTIVATION})
#: Kinds whose overlap may be blended (poses on SE(3), the others element-wise).
BLENDABLE_KINDS = frozenset({JOINT_POSITION, JOINT_POSITION_DELTA, JOINT_VELOCITY, CARTESIAN_POSE,
                             CARTESIAN_POSE_DELTA, CARTESIAN_TWIST})
_CUSTOM = "custom:"


def check_kind(kind: Any, target: str) -> str:
    """``kind`` if it is a built-in kind or ``"custom:<name>"``; otherwise ``ValueError`` naming ``target`` and ``kind``."""
    if isinstance(kind, str) and (kind in BUILTIN_KINDS or (kind.startswith(_CUSTOM) and len(kind) > len(_CUSTOM))):
        return kind
    raise ValueError(f"command for target {target!r} has kind {kind!r}, which is neither a built-in kind "
                     f"({', '.join(BUILTIN_KINDS)}) nor 'custom:<name>'")


def _array(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any conversion failure names the field
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from exc
    if array.dtype == object:
        raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}")
    return array


@dataclasses.dataclass(frozen=True)
class Command:
    """One target's command: ``kind`` (see :data:`BUILTIN_KINDS`), ``value`` (a numpy array).

    Units: joint kinds in rad and rad/s (7,); ``cartesian_pose`` a 4x4 transform
    in the base frame (m); ``cartesian_pose_delta`` a 4x4 transform applied on
    the left of the observed pose; ``cartesian_twist`` (6,) m/s and rad/s;
    gripper widths in m, ``gripper_open_close`` and ``eef_activation`` 0 (open) or 1 (close).
    The kind is checked when an :class:`Action` is built, naming the target.
    """

    kind: str
    value: np.ndarray
    ref_frame: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise TypeError(f"Command kind must be a string, got {type(self.kind).__name__}")
        value = _array("Command value", self.value)
        if value.dtype.kind in "iub":
            value = value.astype(float)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "meta", dict(self.meta))


class Action:
    """A set of commands for one control step, by target name.

    ``commands`` maps a target (``"arm"``, ``"gripper"``...) to a
    :class:`Command`, or to a ``(kind, value)`` pair or a ``{"kind": ..., "value": ...}``
    mapping. A kind that is not built in nor ``"custom:<name>"`` raises ``ValueError``
    naming the target and the kind.

    Example::

        import numpy as np
        from aiofranka.policy import Action, Command

        action = Action(commands={"arm": Command("joint_position", np.zeros(7)),
                                  "gripper": ("gripper_open_close", 1.0)})
        action["arm"].value
    """

    __slots__ = ("commands",)

    def __init__(self, commands: Mapping[str, Any]) -> None:
        if not isinstance(commands, Mapping):
            raise TypeError(f"Action commands must be a mapping of target -> Command, got {type(commands).__name__}")
        built: dict[str, Command] = {}
        for target, command in commands.items():
            if not isinstance(target, str):
                raise TypeError(f"Action targets must be strings, got {target!r}")
            if isinstance(command, Command):
                pass
            elif isinstance(command, Mapping):
                command = Command(**command)
            elif isinstance(command, tuple) and len(command) == 2:
                command = Command(command[0], command[1])
            else:
                raise TypeError(f"command for target {target!r} must be a Command, a (kind, value) pair or a "
                                f"mapping, got {type(command).__name__}")
            check_kind(command.kind, target)
            built[target] = command
        self.commands = built

    @classmethod
    def single(cls, target: str, kind: str, value: Any, **fields: Any) -> "Action":
        """An action with one command."""
        return cls({target: Command(kind, value, **fields)})

    def __getitem__(self, target: str) -> Command:
        return self.commands[target]

    def get(self, target: str, default: Command | None = None) -> Command | None:
        return self.commands.get(target, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.commands)

    def __len__(self) -> int:
        return len(self.commands)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        if other.commands.keys() != self.commands.keys():
            return False
        return all(a.kind == b.kind and a.value.shape == b.value.shape and np.array_equal(a.value, b.value)
                   for a, b in ((self.commands[t], other.commands[t]) for t in self.commands))

    __hash__ = None  # type: ignore[assignment]

    def layout(self) -> tuple:
        """(target, kind, shape) of every command, sorted: actions with equal layouts can be blended."""
        return tuple(sorted((t, c.kind, c.value.shape) for t, c in self.commands.items()))

    def __getstate__(self):
        return self.commands

    def __setstate__(self, state) -> None:
        self.commands = state

    def __repr__(self) -> str:
        inner = ", ".join(f"{t}={c.kind}{list(c.value.shape)}" for t, c in self.commands.items())
        return f"Action({inner})"


@dataclasses.dataclass(eq=False)
class Frame:
    """One observation: camera ``images`` and ``state`` arrays by name, the ``task`` and free ``meta``.

    ``timestamp_ns`` (``time.monotonic_ns()`` when observed) and ``sequence_id``
    (0, 1, 2... per runtime) are filled in by the runtime when left ``None``.
    Values in ``images`` and ``state`` become numpy arrays. The built-in
    observer puts the robot's millisecond clock in ``meta["robot_time_ms"]``.

    Example::

        import numpy as np
        from aiofranka.policy import Frame

        frame = Frame(images={"wrist": np.zeros((224, 224, 3), np.uint8)}, state={"q": np.zeros(7)},
                      task={"instruction": "pick the cube"})
    """

    images: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timestamp_ns: int | None = None
    sequence_id: int | None = None

    def __post_init__(self) -> None:
        for field in ("images", "state", "task", "meta"):
            value = getattr(self, field)
            if not isinstance(value, Mapping):
                raise TypeError(f"Frame.{field} must be a mapping, got {type(value).__name__}")
        self.images = {str(k): _array(f"Frame.images[{k!r}]", v) for k, v in self.images.items()}
        self.state = {str(k): _array(f"Frame.state[{k!r}]", v) for k, v in self.state.items()}
        self.task = dict(self.task)
        self.meta = dict(self.meta)
        if self.timestamp_ns is not None and (isinstance(self.timestamp_ns, bool) or not isinstance(
                self.timestamp_ns, (int, np.integer)) or self.timestamp_ns < 0):
            raise ValueError(f"Frame.timestamp_ns must be a non-negative int, got {self.timestamp_ns!r}")
        if self.sequence_id is not None and (isinstance(self.sequence_id, bool) or not isinstance(
                self.sequence_id, (int, np.integer)) or self.sequence_id < 0):
            raise ValueError(f"Frame.sequence_id must be a non-negative int, got {self.sequence_id!r}")

    @classmethod
    def coerce(cls, value: Any, *, source: str = "observe_fn") -> "Frame":
        """A Frame from a Frame, or from a mapping with Frame's fields (``images``, ``state``...)."""
        if isinstance(value, Frame):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"{source} returned a mapping with unknown Frame fields {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"{source} must return a Frame (or a mapping of its fields), got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class ChunkRequest:
    """What the runtime tells the policy with each call (``act_src_fn(frame, request)``).

    * ``request_step``: the control step the chunk's first action is for (the
      number of steps executed when the request left);
    * ``request_time_s``: the runtime clock at launch (s);
    * ``remaining_steps``: actions still buffered at launch;
    * ``latency_steps``: the latency estimate in control steps (rounded up,
      plus ``latency_steps_offset``), 0 before one is known;
    * with ``enable_rtc=True`` (not on the first bootstrap request):
      ``prev_action_chunk`` (the buffered actions from ``request_step`` on, at
      most ``execute_horizon`` of them, padded to the locked chunk length by
      repeating the last one), ``inference_delay`` (``latency_steps`` clamped to
      ``[1, execute_horizon]``) and ``execute_horizon`` (``execution_steps``);
      otherwise all three are ``None``;
    * ``due_s``: when the chunk's first action is due on the runtime's clock
      (the robot clock with the Controller executor, in seconds), if the buffer
      lasts until then; ``None`` when it cannot be known (before the first
      chunk, while starved, with a step-by-step executor). A policy that knows
      time can place its chunk exactly: action ``j`` is due at ``due_s + j / control_hz``.
    """

    request_step: int
    request_time_s: float
    remaining_steps: int
    latency_steps: int
    prev_action_chunk: tuple[Action, ...] | None = None
    inference_delay: int | None = None
    execute_horizon: int | None = None
    due_s: float | None = None

    @property
    def rtc(self) -> bool:
        """True when the request carries the RTC hints."""
        return self.prev_action_chunk is not None


def normalize_chunk(value: Any, source: str = "act_src_fn") -> list[Action]:
    """A policy's reply as a non-empty list of Actions (one Action is a chunk of one)."""
    if isinstance(value, Action):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{source} must return an Action or a list of Actions, got {type(value).__name__}")
    chunk = list(value)
    if not chunk:
        raise ValueError(f"{source} returned an empty chunk")
    for index, action in enumerate(chunk):
        if not isinstance(action, Action):
            raise TypeError(f"{source} returned a chunk whose item {index} is {type(action).__name__}, not an Action")
    return chunk
