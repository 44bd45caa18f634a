"""The offload helpers under the module name aiofranka 0.9 used.

``from aiofranka.async_utils import asyncify, CudaInferenceThread, mpify`` gives the same
objects as ``from aiofranka import ...``; they live in :mod:`aiofranka.offload` and are
imported on first use, so this module stays as light as ``import aiofranka``. What changed
since 0.9: docs/migration.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["CudaInferenceThread", "ampify", "async_input", "asyncify", "mpify"]

if TYPE_CHECKING:  # pragma: no cover
    from .offload import CudaInferenceThread, ampify, async_input, asyncify, mpify


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'aiofranka.async_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(".offload", __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
