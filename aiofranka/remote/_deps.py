"""grpcio and its health service, or an error that says which extra installs them."""

from __future__ import annotations

from ..exceptions import MissingDependencyError

try:
    import grpc
    import grpc.aio
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingDependencyError(
        "the remote policy needs grpcio and grpcio-health-checking: pip install grpcio==1.85.0 "
        "grpcio-health-checking==1.85.0 (from a checkout: pip install -e '.[remote]')") from exc

__all__ = ["grpc", "health", "health_pb2", "health_pb2_grpc"]
