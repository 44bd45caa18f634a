"""The client side: :func:`connect_policy` and :class:`RemotePolicy`, a proxy whose methods are awaitables.

The proxy speaks grpc.aio, so the event loop is never blocked; every call has a deadline;
cancelling an await cancels its RPC. gRPC failures are translated in one place
(:func:`_translate`) into the :class:`~aiofranka.exceptions.RemotePolicyError` tree. Guide: docs/remote.md.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import os
import time
from typing import Any

from ..exceptions import (RemoteDeadlineExceeded, RemoteError, RemotePolicyAuthError, RemotePolicyError,
                          RemotePolicyUnavailable, RemoteTraceback)
from ..stats import RemoteStats, SampleRing
from ._codec import CodecError, decode, encode_call
from ._deps import grpc, health_pb2, health_pb2_grpc
from ._protocol import (CALL_METHOD, HEADER, MAX_MESSAGE_BYTES, OP_CALL, OP_GET, SERVICE, STATUS_RAISED,
                        TOKEN_METADATA_KEY, TOKEN_PREFIX, channel_options, is_loopback, read_pem, split_target)

__all__ = ["RemotePolicy", "connect_policy"]

_RESERVED_PREFIX = "_aiofranka_"
#: Reconnect attempts back off to at most this (gRPC's default climbs to 120 s): a restarted
#: server is found again within about a second.
_RECONNECT_MAX_MS = 1000


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _translate(error, name: str, deadline: float, target: str) -> RemotePolicyError:
    """A gRPC failure as the aiofranka error it means (the gRPC error stays as ``__cause__``)."""
    code = error.code()
    detail = error.details() or ""
    where = f"remote policy {target}: {name}()"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RemoteDeadlineExceeded(f"{where} got no reply within its deadline of {deadline:g} s")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # CANCELLED here: the server stopped
        return RemotePolicyUnavailable(f"{where}: the server is unavailable ({detail})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RemotePolicyAuthError(f"{where}: the server refused the token ({detail})")
    return RemotePolicyError(f"{where} failed: {code.name}: {detail}")


def _raised(value, name: str) -> BaseException:
    """The exception the server's object raised: a builtin as itself, anything else as RemoteError."""
    try:
        type_name, message, text = value
    except (TypeError, ValueError):
        return RemotePolicyError(f"{name}(): the server sent a malformed error")
    kind = getattr(builtins, type_name, None) if "." not in str(type_name) else None
    if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
        try:
            error = kind(message)
        except Exception:  # noqa: BLE001 - an exception type that wants other arguments
            error = RemoteError(f"{type_name}: {message}", type_name, text)
    else:
        error = RemoteError(f"{type_name}: {message}", str(type_name), str(text))
    if text:
        error.__cause__ = RemoteTraceback(str(text))
    return error


class _Figures:
    __slots__ = ("calls", "unavailable", "deadline_exceeded", "cancelled", "failed", "round_trip", "queue_wait",
                 "inference", "transport")

    def __init__(self) -> None:
        self.calls = self.unavailable = self.deadline_exceeded = self.cancelled = self.failed = 0
        self.round_trip, self.queue_wait = SampleRing(4096), SampleRing(4096)
        self.inference, self.transport = SampleRing(4096), SampleRing(4096)

    def snapshot(self) -> RemoteStats:
        return RemoteStats(self.calls, self.unavailable, self.deadline_exceeded, self.cancelled, self.failed,
                           self.round_trip.summary(), self.queue_wait.summary(), self.inference.summary(),
                           self.transport.summary())


class _Link:
    """The channel, the call stub and the figures behind a :class:`RemotePolicy`."""

    def __init__(self, target: str, channel, metadata, deadline: float) -> None:
        self.target = target
        self.channel = channel
        self.metadata = metadata
        self.deadline = deadline
        self.stub = channel.unary_unary(CALL_METHOD)  # bytes in, bytes out: the codec is ours
        self.figures = _Figures()
        self.closed = False

    async def request(self, op: int, name: str, args: tuple, kwargs: dict, deadline: float | None = None):
        if self.closed:
            raise RemotePolicyError(f"remote policy {self.target} is closed; connect again")
        try:
            body = bytes((op,)) + encode_call(name, args, kwargs)
        except TypeError as exc:
            raise TypeError(f"remote policy {self.target}: {name}(): {exc}") from None
        deadline = self.deadline if deadline is None else deadline
        figures = self.figures
        started = time.perf_counter_ns()
        call = self.stub(body, timeout=deadline, metadata=self.metadata, wait_for_ready=False)
        try:
            reply = await call
        except asyncio.CancelledError:
            call.cancel()  # the server skips it if it has not started it yet
            figures.cancelled += 1
            raise
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc, name, deadline, self.target)
            if isinstance(error, RemoteDeadlineExceeded):
                figures.deadline_exceeded += 1
            elif isinstance(error, RemotePolicyUnavailable):
                figures.unavailable += 1
            else:
                figures.failed += 1
            raise error from exc
        round_trip = time.perf_counter_ns() - started
        try:
            status, queue_ns, infer_ns = HEADER.unpack_from(reply)
            value = decode(memoryview(reply)[HEADER.size:])
        except (CodecError, ValueError) as exc:
            figures.failed += 1
            raise RemotePolicyError(f"remote policy {self.target}: {name}() sent a malformed reply: {exc}") from None
        figures.calls += 1
        figures.round_trip.push(round_trip)
        figures.queue_wait.push(queue_ns)
        figures.inference.push(infer_ns)
        figures.transport.push(max(0, round_trip - queue_ns - infer_ns))
        if status == STATUS_RAISED:
            raise _raised(value, name)
        return value


class _RemoteMember:
    """``proxy.name``: call it for the method, or await it for the attribute's value."""

    __slots__ = ("_link", "_name")

    def __init__(self, link: _Link, name: str) -> None:
        self._link = link
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any):
        return self._link.request(OP_CALL, self._name, args, kwargs)

    def __await__(self):
        return self._link.request(OP_GET, self._name, (), {}).__await__()

    def __repr__(self) -> str:
        return f"<remote member {self._name!r} of {self._link.target}>"


class RemotePolicy:
    """Calls into an object served by ``aiofranka serve`` / :func:`serve_policy`; made by :func:`connect_policy`.

    Like an ``mpify`` proxy: every public method of the served object becomes a coroutine
    function and awaiting an attribute fetches its value, so ``proxy.infer`` is a policy
    for :func:`~aiofranka.policy.run_step` as it stands::

        import asyncio
        import numpy as np
        from aiofranka.remote import connect_policy, serve_policy

        class Policy:
            def infer(self, q):
                return q + 0.01

        async def main(address):
            async with await connect_policy(address, deadline=0.5) as policy:
                print(await policy.infer(np.zeros(7)))   # runs on the server
                print(policy.stats.round_trip)           # p50 / p99 of the round trips

        server = serve_policy(Policy)   # here for the example; usually `aiofranka serve` elsewhere
        asyncio.run(main(server.address))
        server.stop()

    Every call has a deadline (``deadline`` of :func:`connect_policy`, or :meth:`call_with_deadline`);
    past it the RPC is cancelled and :class:`~aiofranka.exceptions.RemoteDeadlineExceeded` raised.
    A server that cannot be reached or goes away mid-call raises
    :class:`~aiofranka.exceptions.RemotePolicyUnavailable` at once; the proxy reconnects by itself
    and works again once the server is back. Cancelling an await cancels the RPC (the server skips
    the call if it has not started it). An exception raised by the served object comes back as
    itself for a builtin type, else as :class:`~aiofranka.exceptions.RemoteError`, with the
    server's traceback as ``__cause__``.

    The proxy's own names (``call``, ``call_with_deadline``, ``get``, ``ready``, ``stats``,
    ``target``, ``aclose``) reach the object through ``await proxy.call(name, ...)`` /
    ``await proxy.get(name)``. Names starting with ``_`` are not served.
    """

    __slots__ = ("_aiofranka_link", "__dict__", "__weakref__")

    def __init__(self, link: _Link) -> None:
        object.__setattr__(self, "_aiofranka_link", link)

    def __getattr__(self, name: str) -> _RemoteMember:
        if name.startswith(_RESERVED_PREFIX) or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        member = _RemoteMember(self._aiofranka_link, name)
        self.__dict__[name] = member  # the next `proxy.name` is a plain lookup
        return member

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot set {name!r} through a RemotePolicy: the object lives on the server; "
                             f"give it a method that sets it and call that")

    def __repr__(self) -> str:
        return f"<RemotePolicy {self._aiofranka_link.target}>"

    @property
    def target(self) -> str:
        """The server's ``host:port``."""
        return self._aiofranka_link.target

    @property
    def stats(self) -> RemoteStats:
        """A frozen snapshot of the calls' figures: round trip, queue wait, inference, transport (µs)."""
        return self._aiofranka_link.figures.snapshot()

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``obj.name(*args, **kwargs)`` on the server and return its result."""
        return await self._aiofranka_link.request(OP_CALL, name, args, kwargs)

    async def call_with_deadline(self, deadline: float, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call` with its own ``deadline`` (seconds) instead of the proxy's."""
        return await self._aiofranka_link.request(OP_CALL, name, args, kwargs, _positive("deadline", deadline))

    async def get(self, name: str, /) -> Any:
        """Return the value of attribute ``name`` of the server's object."""
        return await self._aiofranka_link.request(OP_GET, name, (), {})

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until the server's health service says SERVING (``RemotePolicyUnavailable`` if not in time)."""
        link = self._aiofranka_link
        timeout = link.deadline if timeout is None else _positive("timeout", timeout)
        stub = health_pb2_grpc.HealthStub(link.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout,
                                     metadata=link.metadata, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc, "health check", timeout, link.target)
            if isinstance(error, RemoteDeadlineExceeded):
                error = RemotePolicyUnavailable(f"remote policy {link.target}: no server answered within {timeout:g} s")
            raise error from exc
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RemotePolicyUnavailable(f"remote policy {link.target}: the server is not serving "
                                          f"({health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)})")

    async def aclose(self) -> None:
        """Close the channel; calls in flight are cancelled, later calls raise. Idempotent."""
        link = self._aiofranka_link
        if not link.closed:
            link.closed = True
            await link.channel.close()

    async def __aenter__(self) -> "RemotePolicy":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


async def connect_policy(target: str, *, token: str | None = None, deadline: float = 1.0,
                         connect_timeout: float = 10.0, tls_ca: str | os.PathLike | None = None,
                         tls_server_name: str | None = None, insecure: bool = False,
                         max_message_bytes: int = MAX_MESSAGE_BYTES) -> RemotePolicy:
    """Connect to a policy server at ``"host:port"``; returns a :class:`RemotePolicy` once it answers.

    ``deadline``: seconds each call may take, reply included (per call:
    :meth:`RemotePolicy.call_with_deadline`). ``connect_timeout``: how long to wait for the
    server's health check to say SERVING (:class:`~aiofranka.exceptions.RemotePolicyUnavailable`
    otherwise). ``token``: the server's shared token, sent with every call. ``tls_ca``: a PEM
    file of the certificate authority (or the self-signed certificate) to trust, which turns
    TLS on; ``tls_server_name`` overrides the name checked in the certificate. A host beyond
    loopback without TLS is refused unless ``insecure=True`` (the token would cross the network
    in clear). Never blocks the event loop.
    """
    host, port = split_target(target)
    deadline = _positive("deadline", deadline)
    connect_timeout = _positive("connect_timeout", connect_timeout)
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"token must be a non-empty string, got {token!r}")
    if tls_ca is None and not insecure and not is_loopback(host):
        raise ValueError(f"target {target!r} is not a loopback address: connecting to it needs TLS (tls_ca); "
                         f"pass insecure=True to connect in plaintext on a network you trust")
    options = channel_options(max_message_bytes) + [("grpc.max_reconnect_backoff_ms", _RECONNECT_MAX_MS),
                                                    ("grpc.initial_reconnect_backoff_ms", 100),
                                                    ("grpc.min_reconnect_backoff_ms", 100)]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls_ca is not None:
        if tls_server_name is not None:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=read_pem(tls_ca, "tls_ca"))
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(address, options=options)
    metadata = ((TOKEN_METADATA_KEY, TOKEN_PREFIX + token),) if token is not None else None
    proxy = RemotePolicy(_Link(address, channel, metadata, deadline))
    try:
        await proxy.ready(connect_timeout)
    except BaseException:
        await proxy.aclose()
        raise
    return proxy
