"""Offload: work that must not run on the event loop, moved to a thread or a child process.

``to_thread`` (:func:`asyncify`, :func:`async_input`), ``cuda`` (:class:`CudaInferenceThread`)
and ``to_process`` (:func:`mpify`, :func:`ampify`, :class:`ProcessProxy`). Names are imported
from their module on first use, so ``import aiofranka.offload`` stays light. Guide: docs/async.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
__all__ = [
    "ASYNCIFY_WORKERS",
    "AsyncCallable",
    "CudaInferenceThread",
    "DEFAULT_ARENA_BYTES",
    "InferenceStats",
    "ProcessProxy",
    "ProxyStats",
    "ampify",
    "async_input",
    "asyncify",
    "mpify",
    "set_asyncify_workers",
    "stop_asyncify_pool",
]

_LAZY = {
    "ASYNCIFY_WORKERS": ".to_thread",
    "AsyncCallable": ".to_thread",
    "async_input": ".to_thread",
    "asyncify": ".to_thread",
    "set_asyncify_workers": ".to_thread",
    "stop_asyncify_pool": ".to_thread",
    "CudaInferenceThread": ".cuda",
    "InferenceStats": ".cuda",
    "DEFAULT_ARENA_BYTES": ".to_process",
    "ampify": ".to_process",
    "mpify": ".to_process",
    "ProcessProxy": "._proxy",
    "ProxyStats": "._proxy",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._proxy import ProcessProxy, ProxyStats
    from .cuda import CudaInferenceThread, InferenceStats
    from .to_process import DEFAULT_ARENA_BYTES, ampify, mpify
    from .to_thread import ASYNCIFY_WORKERS, AsyncCallable, async_input, asyncify, set_asyncify_workers, stop_asyncify_pool


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
