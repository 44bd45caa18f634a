"""The policy server: :func:`serve_policy` hosts an object's methods over gRPC (``aiofranka serve``).

Calls run one at a time, in arrival order, on the server's worker threads; each reply carries
how long the call queued and how long it ran. The standard gRPC health service answers beside
it. Guide, security and faults: docs/remote.md.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import os
import threading
import time
import traceback
from typing import Any, Callable

from .._factory import load_factory  # noqa: F401 - re-exported: serve and profile name their targets alike
from ._codec import CodecError, decode, encode
from ._deps import grpc, health, health_pb2, health_pb2_grpc
from ._protocol import (HEADER, MAX_MESSAGE_BYTES, OP_CALL, OP_GET, SERVICE, STATUS_OK, STATUS_RAISED,
                        TOKEN_METADATA_KEY, TOKEN_PREFIX, channel_options, check_listen_security, read_pem)

__all__ = ["PolicyServer", "load_factory", "serve_policy"]


class _TokenCheck(grpc.ServerInterceptor):
    """A server interceptor: every call (health checks included) must carry the token."""

    def __init__(self, token: str) -> None:
        self._expected = (TOKEN_PREFIX + token).encode()

    def intercept_service(self, continuation, details):
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else bytes(value)
                break
        handler = continuation(details)
        if hmac.compare_digest(given, self._expected) or handler is None:
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny) if not handler.request_streaming \
                else grpc.stream_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny) if not handler.request_streaming \
            else grpc.stream_unary_rpc_method_handler(deny)


class _Servicer:
    """Runs the calls on the hosted object, one at a time."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()  # the object sees one call at a time, like an mpify child
        self.calls = 0
        self.skipped = 0

    def call(self, request: bytes, context) -> bytes:
        arrived = time.perf_counter_ns()
        try:
            if not request:
                raise CodecError("empty request")
            op = request[0]
            name, args, kwargs = decode(memoryview(request)[1:])
            if op not in (OP_CALL, OP_GET) or not isinstance(name, str) or not isinstance(args, tuple) \
                    or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise CodecError("not a call")
        except CodecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
        if name.startswith("_"):
            # Only public names are served: no dunder walks through the object's internals.
            return self._reply(STATUS_RAISED, 0, 0, ("AttributeError", f"{name!r} is private: only public names "
                                                     f"are served", ""))
        with self._lock:
            started = time.perf_counter_ns()
            if not context.is_active():  # the client gave up (deadline, cancel) while the call queued
                self.skipped += 1
                context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call before it ran")
            try:
                value = getattr(self._target, name)
                if op == OP_CALL:
                    value = value(*args, **kwargs)
                status = STATUS_OK
            except Exception as exc:  # noqa: BLE001 - sent back to the caller, by name and text only
                status, value = STATUS_RAISED, _describe(exc)
            ended = time.perf_counter_ns()
            self.calls += 1
        return self._reply(status, started - arrived, ended - started, value)

    def _reply(self, status: int, queue_ns: int, infer_ns: int, value) -> bytes:
        try:
            payload = encode(value)
        except TypeError as exc:
            status, payload = STATUS_RAISED, encode(("TypeError", f"the reply cannot be sent: {exc}", ""))
        return HEADER.pack(status, queue_ns, infer_ns) + payload


def _describe(exc: BaseException) -> tuple[str, str, str]:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return name, str(exc), "".join(traceback.format_exception(exc))


class PolicyServer:
    """A running policy server, made by :func:`serve_policy`.

    ``port`` is the bound port (useful with ``port=0``), ``address`` is ``host:port``.
    :meth:`stop` is idempotent; :meth:`wait` blocks until the server ends.

    Example::

        from aiofranka.remote import serve_policy

        server = serve_policy(dict, gain=2.0)   # any object; its public methods become remote
        print(server.address)                   # 127.0.0.1:<a free port>
        server.stop()
    """

    def __init__(self, server, health, servicer: _Servicer, host: str, port: int, secure: bool) -> None:
        self._server = server
        self._health = health
        self._servicer = servicer
        self.host = host
        self.port = port
        self.secure = secure
        self._stopped = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def calls(self) -> int:
        """Calls the hosted object has run."""
        return self._servicer.calls

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop taking calls; calls in flight get ``grace`` seconds, then are cancelled. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` passed (False)."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> "PolicyServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PolicyServer {self.address} {'tls' if self.secure else 'plaintext'}>"


def serve_policy(factory: Callable[..., Any], /, *args: Any, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, tls_cert: str | os.PathLike | None = None,
                 tls_key: str | os.PathLike | None = None, insecure: bool = False, max_workers: int = 8,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, **kwargs: Any) -> PolicyServer:
    """Build ``factory(*args, **kwargs)`` here and serve its public methods and attributes; returns at once.

    Listens on ``host:port`` (loopback by default; ``port=0`` picks a free one). Beyond
    loopback it needs ``tls_cert`` and ``tls_key`` (PEM files) and a shared ``token``, and
    refuses to start without them unless ``insecure=True``. With a ``token`` every call must
    carry it (``connect_policy(..., token=...)``), compared in constant time. Calls run one at
    a time; ``max_workers`` threads receive them (and answer health checks meanwhile).
    Arguments and results travel in aiofranka's typed encoding, never pickle
    (docs/remote.md#the-wire). The keywords of this function are not passed to the factory.

    Example::

        from aiofranka.remote import serve_policy

        class Policy:
            def infer(self, frame, request):
                ...

        server = serve_policy(Policy, port=50051)
        server.wait()        # serve until stopped (Ctrl-C: server.stop())
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
    check_listen_security(host, token=token, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure)
    credentials_pair = None if tls_cert is None else (read_pem(tls_key, "tls_key"), read_pem(tls_cert, "tls_cert"))
    target = factory(*args, **kwargs)

    servicer = _Servicer(target)
    interceptors = [_TokenCheck(token)] if token is not None else []
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="aiofranka-serve"),
                         interceptors=interceptors,
                         # no SO_REUSEPORT: a second server on a taken port must fail, not share it
                         options=channel_options(max_message_bytes) + [("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(servicer.call)})])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials_pair is not None:
            bound = server.add_secure_port(bind, grpc.ssl_server_credentials([credentials_pair]))
        else:
            bound = server.add_insecure_port(bind)
    except RuntimeError:  # grpcio raises this when the port is taken
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {bind} (the port is taken or the address is not this host's)")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return PolicyServer(server, health_servicer, servicer, host, bound, credentials_pair is not None)


