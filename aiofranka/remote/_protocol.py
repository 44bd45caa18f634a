"""What client and server agree on: the service, the call's framing, the security rules.

A call is one unary gRPC method ``/aiofranka.remote.Policy/Call`` whose request and reply are
raw bytes (no protobuf stubs, no protoc step). Request: one op byte, then the encoded
``(name, args, kwargs)``. Reply: a header (status, queue wait ns, inference ns), then the
encoded result. docs/remote.md#the-wire.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = [
    "CALL_METHOD", "HEADER", "MAX_MESSAGE_BYTES", "OP_CALL", "OP_GET", "SERVICE", "STATUS_OK", "STATUS_RAISED",
    "check_listen_security", "is_loopback", "split_target",
]

SERVICE = "aiofranka.remote.Policy"
CALL_METHOD = f"/{SERVICE}/Call"

OP_CALL = 0x63  # 'c': obj.name(*args, **kwargs)
OP_GET = 0x67  # 'g': obj.name

STATUS_OK = 0
STATUS_RAISED = 1  # the payload is (type name, message, traceback text)

#: status (u8), queue wait (ns, u64), inference (ns, u64): durations only, no instants cross hosts.
HEADER = struct.Struct("<BQQ")

#: gRPC's default receive limit is 4 MiB: several camera images exceed it.
MAX_MESSAGE_BYTES = 64 << 20

TOKEN_METADATA_KEY = "authorization"
TOKEN_PREFIX = "Bearer "


def read_pem(path, name: str) -> bytes:
    """A certificate or key file's bytes; an unreadable one is a ValueError naming the parameter."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path!r}: {exc.strerror}") from None


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def split_target(target: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``; ``ValueError`` naming ``target``."""
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"target must be 'host:port', got {target!r}")
    host, _, port = target.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise ValueError(f"target must be 'host:port' with a port in 1..65535, got {target!r}")
    return host.strip("[]"), number


def check_listen_security(host: str, *, token, tls_cert, tls_key, insecure: bool) -> None:
    """Refuse to listen beyond loopback without TLS and a token, unless ``insecure`` says so."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together: give both files or neither")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"token must be a non-empty string, got {token!r}")
    if is_loopback(host) or insecure:
        return
    missing = [name for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key), ("token", token))
               if value is None]
    if missing:
        raise ValueError(f"host {host!r} is not a loopback address: serving on it needs TLS and a shared token "
                         f"(missing: {', '.join(missing)}); pass insecure=True (--insecure) to serve without them "
                         f"on a network you trust")
