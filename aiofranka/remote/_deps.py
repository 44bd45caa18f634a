"""grpcio and its health service, or an error that says which extra installs them."""

from __future__ import annotations

from ..exceptions import MissingDependencyError

try:
    import grpc
    import grpc.aio
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingDependencyError(
        "the remote policy needs grpcio and grpcio-health-checking: pip install 'aiofranka[remote]'") from exc

__all__ = ["grpc", "health", "health_pb2", "health_pb2_grpc"]
