"""aiofranka: an asyncio-native 1 kHz control framework for Franka FR3 arms.

``import aiofranka`` stays light: pylibfranka, ruckig and the simulator are
imported when the objects that need them are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .exceptions import (
    AiofrankaError,
    CallTimeoutError,
    CommandError,
    ControlLawError,
    ControllerStateError,
    ControllerStoppedError,
    EventLoopStallError,
    GripperError,
    GripperStoppedError,
    InvalidOperationError,
    MissingDependencyError,
    MotionTimeoutError,
    OffloadError,
    PolicyCallbackError,
    PolicyError,
    RealtimeError,
    ReflexError,
    RemoteDeadlineExceeded,
    RemoteError,
    RemotePolicyAuthError,
    RemotePolicyError,
    RemotePolicyUnavailable,
    RemoteTraceback,
    RobotConnectionError,
    RobotError,
    SessionError,
    SessionLoopError,
    SessionStateError,
    SimulatorError,
    WorkerCrashedError,
    WorkerStoppedError,
)
from .probe import WakeupReport, probe_wakeups
from .stats import LoopStats, Summary

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AiofrankaError",
    "CallTimeoutError",
    "ChunkRequest",
    "Command",
    "CommandError",
    "ControlLawError",
    "Controller",
    "ControllerExecutor",
    "ControllerObserver",
    "ControllerStateError",
    "ControllerStoppedError",
    "CudaInferenceThread",
    "EventLoopStallError",
    "Frame",
    "Franka",
    "FrankaController",
    "FrankaRemoteController",
    "Gripper",
    "GripperError",
    "GripperExecutor",
    "GripperState",
    "GripperStoppedError",
    "InferenceMode",
    "InferenceRuntime",
    "InvalidOperationError",
    "LoopStats",
    "MissingDependencyError",
    "MotionTimeoutError",
    "OffloadError",
    "Pacer",
    "PlaybackStats",
    "PolicyCallbackError",
    "PolicyError",
    "PolicyStats",
    "ProcessProxy",
    "RealtimeError",
    "Recorder",
    "ReflexError",
    "RemoteDeadlineExceeded",
    "RemoteError",
    "RemotePolicyAuthError",
    "RemotePolicyError",
    "RemotePolicyUnavailable",
    "RemoteTraceback",
    "Robot",
    "RobotConnectionError",
    "RobotError",
    "RobotState",
    "Session",
    "SessionError",
    "SessionLoopError",
    "SessionStateError",
    "SessionStats",
    "Simulator",
    "SimulatorError",
    "StepResult",
    "Summary",
    "TargetRows",
    "WakeupReport",
    "WorkerCrashedError",
    "WorkerStoppedError",
    "__version__",
    "ampify",
    "async_input",
    "asyncify",
    "check_policy",
    "mpify",
    "probe_wakeups",
    "profile_sync_inference",
    "recommend_inference_mode",
    "run",
    "run_step",
    "run_step_sync",
]

_LAZY = {
    "Controller": ".loop.controller",
    "CudaInferenceThread": ".offload",
    "Franka": ".sync.franka",
    "FrankaController": ".loop.controller",
    "FrankaRemoteController": ".sync.remote",
    "ProcessProxy": ".offload",
    "ampify": ".offload",
    "async_input": ".offload",
    "asyncify": ".offload",
    "mpify": ".offload",
    "Robot": ".robot",
    "Gripper": ".robot",
    "GripperState": ".robot",
    "RobotState": ".robot",
    "Pacer": ".pacing",
    "Session": ".sync.session",
    "SessionStats": ".stats",
    "run": ".sync.session",
    "Simulator": ".sim",
    "Action": ".policy",
    "ChunkRequest": ".policy",
    "Command": ".policy",
    "ControllerExecutor": ".policy",
    "ControllerObserver": ".policy",
    "Frame": ".policy",
    "GripperExecutor": ".policy",
    "InferenceMode": ".policy",
    "InferenceRuntime": ".policy",
    "StepResult": ".policy",
    "check_policy": ".policy",
    "profile_sync_inference": ".policy",
    "recommend_inference_mode": ".policy",
    "run_step": ".policy",
    "run_step_sync": ".policy",
    "PlaybackStats": ".stats",
    "PolicyStats": ".stats",
    "TargetRows": ".loop.trajectory",
    "Recorder": ".loop.recorder",
}

if TYPE_CHECKING:  # pragma: no cover
    from .loop.controller import Controller, FrankaController
    from .sync.franka import Franka
    from .offload import CudaInferenceThread, ProcessProxy, ampify, async_input, asyncify, mpify
    from .sync.remote import FrankaRemoteController
    from .robot import Gripper, GripperState, Robot, RobotState
    from .pacing import Pacer
    from .stats import SessionStats
    from .sync.session import Session, run
    from .sim import Simulator
    from .loop.trajectory import TargetRows
    from .loop.recorder import Recorder
    from .policy import (Action, ChunkRequest, Command, ControllerExecutor, ControllerObserver, Frame, GripperExecutor,
                         InferenceMode, InferenceRuntime, StepResult, check_policy, profile_sync_inference,
                         recommend_inference_mode, run_step, run_step_sync)
    from .stats import PlaybackStats, PolicyStats


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
