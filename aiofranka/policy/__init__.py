"""Learned, chunked policies on the arm: the data contract, the chunk scheduler, the runtime.

``contract`` (:class:`Frame`, :class:`Action`, :class:`Command`, :class:`ChunkRequest`, the kinds),
``chunks`` (:class:`ChunkScheduler`: the scheduling rules as pure step arithmetic). Names are
imported from their module on first use, so ``import aiofranka.policy`` stays light.
Guide: docs/policies.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "Action",
    "BUILTIN_KINDS",
    "ChunkRequest",
    "ChunkScheduler",
    "Command",
    "Frame",
    "Integration",
]

_LAZY = {
    "Action": ".contract",
    "BUILTIN_KINDS": ".contract",
    "ChunkRequest": ".contract",
    "Command": ".contract",
    "Frame": ".contract",
    "ChunkScheduler": ".chunks",
    "Integration": ".chunks",
}

if TYPE_CHECKING:  # pragma: no cover
    from .chunks import ChunkScheduler, Integration
    from .contract import BUILTIN_KINDS, Action, ChunkRequest, Command, Frame


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiofranka.policy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
