"""Learned, chunked policies on the arm: the data contract, the chunk scheduler, the runtime.

``contract`` (:class:`Frame`, :class:`Action`, :class:`Command`, :class:`ChunkRequest`, the kinds),
``chunks`` (:class:`ChunkScheduler`: the scheduling rules as pure step arithmetic),
``interpolation`` (waypoints to 1 kHz rows), ``execution`` (observers and executors),
``runtime`` (:func:`run_step`, :class:`InferenceRuntime`, the sync twin), ``tools``
(:func:`profile_sync_inference`, :func:`recommend_inference_mode`, :func:`check_policy`). Names are
imported from their module on first use, so ``import aiofranka.policy`` stays light.
Guide: docs/policies.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
__all__ = [
    "Action",
    "BUILTIN_KINDS",
    "ChunkExecutor",
    "ChunkRequest",
    "ChunkScheduler",
    "Command",
    "ControllerExecutor",
    "ControllerObserver",
    "Frame",
    "GripperExecutor",
    "InferenceMode",
    "InferenceRuntime",
    "InferenceModeRecommendation",
    "Integration",
    "PolicyCheck",
    "StepResult",
    "SyncInferenceProfile",
    "check_policy",
    "profile_sync_inference",
    "recommend_inference_mode",
    "run_step",
    "run_step_sync",
]

_LAZY = {
    "Action": ".contract",
    "BUILTIN_KINDS": ".contract",
    "ChunkRequest": ".contract",
    "Command": ".contract",
    "Frame": ".contract",
    "ChunkScheduler": ".chunks",
    "Integration": ".chunks",
    "ChunkExecutor": ".execution",
    "ControllerExecutor": ".execution",
    "ControllerObserver": ".execution",
    "GripperExecutor": ".execution",
    "InferenceMode": ".runtime",
    "InferenceRuntime": ".runtime",
    "StepResult": ".runtime",
    "run_step": ".runtime",
    "run_step_sync": ".runtime",
    "InferenceModeRecommendation": ".tools",
    "PolicyCheck": ".tools",
    "SyncInferenceProfile": ".tools",
    "check_policy": ".tools",
    "profile_sync_inference": ".tools",
    "recommend_inference_mode": ".tools",
}

if TYPE_CHECKING:  # pragma: no cover
    from .chunks import ChunkScheduler, Integration
    from .contract import BUILTIN_KINDS, Action, ChunkRequest, Command, Frame
    from .execution import ChunkExecutor, ControllerExecutor, ControllerObserver, GripperExecutor
    from .runtime import InferenceMode, InferenceRuntime, StepResult, run_step, run_step_sync
    from .tools import (InferenceModeRecommendation, PolicyCheck, SyncInferenceProfile, check_policy,
                        profile_sync_inference, recommend_inference_mode)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
