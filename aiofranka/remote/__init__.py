"""A policy on another machine: :func:`serve_policy` (``aiofranka serve``) and :func:`connect_policy`.

The server hosts an object; the client's :class:`RemotePolicy` proxy turns its methods into
awaitables, like an ``mpify`` proxy, over gRPC with a typed encoding (never pickle). grpcio is
imported on first use (``pip install grpcio==1.85.0 grpcio-health-checking==1.85.0``; from a
checkout: ``pip install -e '.[remote]'``). Guide: docs/remote.md.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__all__ = ["PolicyServer", "RemotePolicy", "connect_policy", "serve_policy"]

_LAZY = {"PolicyServer": ".server", "serve_policy": ".server", "RemotePolicy": ".client", "connect_policy": ".client"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
