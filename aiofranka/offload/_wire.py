"""The wire between a proxy and its child: frames on a socket pair, payloads pickled with protocol 5.

One frame per message, length-prefixed like ``Connection.send_bytes``; NumPy arrays and large
pickles travel out of band through a shared-memory segment (``_shm``); exceptions travel with
their formatted traceback. The frame layout and message kinds: docs/async.md (how mpify works).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import socket
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any

from ..exceptions import RemoteError, RemoteTraceback

if TYPE_CHECKING:  # pragma: no cover
    from ._shm import Peer, Pool

__all__ = [
    "CALL", "CONTROL", "ERROR", "GETATTR", "INIT_ERROR", "READY", "RESULT", "STOP",
    "Channel", "decode", "encode", "exception_payload", "import_cloudpickle", "pack_frame",
    "rebuild_exception", "segment_bytes", "unpack_frame",
]

# Message kinds: requests from the parent, replies from the child.
CALL, GETATTR, STOP, CONTROL = 1, 2, 3, 4
READY, RESULT, ERROR, INIT_ERROR = 10, 11, 12, 13

_HDR = struct.Struct("<BQI")
_LEN = struct.Struct("!i")  # multiprocessing.Connection's frame length prefix
_LEN64 = struct.Struct("!Q")
_INLINE_MAX = 4096  # out-of-band buffers smaller than this stay in the pickle stream
_INBAND_MAX = 64 * 1024  # pickled data larger than this goes into shared memory too
_ALIGN = 64


def import_cloudpickle():
    import cloudpickle

    return cloudpickle


def _rebuild_ndarray(buffer, dtype: str, shape: tuple, fortran: bool):
    """Inverse of :func:`_reduce_ndarray` (``buffer`` is 1-D: in-band bytes or our copy)."""
    import numpy

    array = numpy.frombuffer(buffer, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


def _reduce_ndarray(array):
    """A lean protocol-5 reducer: plain dtypes go out of band as one contiguous buffer.

    Non-contiguous arrays are made contiguous first (NumPy's own reducer would copy them
    into the pickle stream); Fortran-ordered ones keep their order.
    """
    dtype = array.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return array.__reduce_ex__(5)
    if array.flags.c_contiguous:
        return _rebuild_ndarray, (pickle.PickleBuffer(array), dtype.str, array.shape, False)
    if not array.flags.f_contiguous:
        import numpy

        array = numpy.ascontiguousarray(array)
        return _rebuild_ndarray, (pickle.PickleBuffer(array), dtype.str, array.shape, False)
    return _rebuild_ndarray, (pickle.PickleBuffer(array.T), dtype.str, array.shape, True)


class _Pickler(pickle.Pickler):
    """Protocol-5 pickler whose dispatch table adds :func:`_reduce_ndarray`."""

    dispatch_table: dict = {}
    _copyreg_size = -1


def _pickler_class():
    """The pickler to use: plain ``pickle`` until NumPy is imported, then :class:`_Pickler`."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if _Pickler._copyreg_size != len(copyreg.dispatch_table):  # refresh if copyreg changed
        table = dict(copyreg.dispatch_table)
        table[numpy.ndarray] = _reduce_ndarray
        _Pickler.dispatch_table = table
        _Pickler._copyreg_size = len(copyreg.dispatch_table)
    return _Pickler


def _pickle(obj: Any, out_of_band: bool) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []
    callback = None
    if out_of_band:

        def callback(picklebuffer):
            raw = picklebuffer.raw()
            if raw.nbytes < _INLINE_MAX:
                return True  # small: in-band is cheaper than a segment
            buffers.append(raw)
            return False

    try:
        pickler = _pickler_class()
        if pickler is None:
            return pickle.dumps(obj, 5, buffer_callback=callback), buffers
        stream = io.BytesIO()
        pickler(stream, 5, buffer_callback=callback).dump(obj)
        return stream.getvalue(), buffers
    except Exception:  # noqa: BLE001 - lambdas, local classes ...: retry with cloudpickle
        for raw in buffers:
            raw.release()
        buffers.clear()
    stream = io.BytesIO()
    import_cloudpickle().CloudPickler(stream, protocol=5, buffer_callback=callback).dump(obj)
    return stream.getvalue(), buffers


def encode(obj: Any, pool: Pool | None) -> tuple[bytes, tuple | None]:
    """Pickle ``obj``; large buffers go into a segment of ``pool``. Returns (data, segment)."""
    data, buffers = _pickle(obj, pool is not None)
    if pool is None or (not buffers and len(data) <= _INBAND_MAX):
        return data, None
    regions = []
    offset = 0
    for raw in buffers:
        regions.append((offset, raw.nbytes))
        offset = -(-(offset + raw.nbytes) // _ALIGN) * _ALIGN
    data_region = None
    if len(data) > _INBAND_MAX:
        data_region = (offset, len(data))
        offset += len(data)
    try:
        seg = pool.acquire(max(offset, 1))
    except OSError:  # /dev/shm full or unavailable: everything through the pipe
        for raw in buffers:
            raw.release()
        data, _ = _pickle(obj, False)
        return data, None
    view = seg.buf
    for (start, length), raw in zip(regions, buffers):
        view[start : start + length] = raw
        raw.release()
    if data_region is not None:
        view[data_region[0] : data_region[0] + data_region[1]] = data
        data = b""
    return data, (seg.name, regions, data_region)


def decode(data, segment: tuple | None, peer: Peer) -> Any:
    """Rebuild a payload, copying its buffers out of the peer's segment."""
    if segment is None:
        return pickle.loads(data)
    name, regions, data_region = segment
    view = peer.view(name)
    buffers = [bytearray(view[start : start + length]) for start, length in regions]
    if data_region is not None:
        data = bytes(view[data_region[0] : data_region[0] + data_region[1]])
    return pickle.loads(data, buffers=buffers)


def segment_bytes(segment: tuple | None) -> int:
    if segment is None:
        return 0
    total = sum(length for _, length in segment[1])
    return total + (segment[2][1] if segment[2] else 0)


def pack_frame(kind: int, rid: int, data, segment=None, releases=None, forgets=None) -> bytes:
    """The bytes to write for one message, with ``Connection.send_bytes``'s length prefix."""
    if segment is None and not releases and not forgets:
        desc = b""
    else:
        desc = pickle.dumps((segment, releases, forgets), 5)
    n = _HDR.size + len(desc) + len(data)
    prefix = _LEN.pack(n) if n <= 0x7FFFFFFF else _LEN.pack(-1) + _LEN64.pack(n)
    return b"".join((prefix, _HDR.pack(kind, rid, len(desc)), desc, data))


def unpack_frame(frame: bytes):
    kind, rid, dlen = _HDR.unpack_from(frame)
    start = _HDR.size
    if dlen:
        segment, releases, forgets = pickle.loads(frame[start : start + dlen])
    else:
        segment = releases = forgets = None
    return kind, rid, segment, releases, forgets, memoryview(frame)[start + dlen :]


class Channel:
    """One end of the pipe's socket, framed like ``Connection.send_bytes``.

    It reads every available frame with one ``recv_into`` and, unlike
    ``Connection.recv_bytes``, never blocks the caller on a half-written frame: a
    non-blocking :meth:`fill` keeps partial data until the rest arrives.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self._buf = bytearray()
        self._chunk = bytearray(1 << 18)
        self._view = memoryview(self._chunk)

    def fill(self, block: bool) -> bool:
        """Append what the socket holds (waiting for data if ``block``); False at EOF."""
        flags = 0 if block else socket.MSG_DONTWAIT
        size = len(self._chunk)
        while True:
            try:
                n = self._sock.recv_into(self._chunk, size, flags)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # reset, or closed under us
                return False
            if n == 0:
                return False
            self._buf += self._view[:n]
            if n < size:
                return True
            flags = socket.MSG_DONTWAIT  # the chunk was full: take the rest without waiting

    def send(self, wire: bytes) -> None:
        self._sock.sendall(wire)

    def next_frame(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = _LEN.unpack_from(buf)
        start = 4
        if n == -1:
            if len(buf) < 12:
                return None
            (n,) = _LEN64.unpack_from(buf, 4)
            start = 12
        end = start + n
        if len(buf) < end:
            return None
        frame = bytes(buf[start:end])
        del buf[:end]
        return frame

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass


def exception_payload(exc: BaseException) -> tuple:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    blob = None
    for dumps in (pickle.dumps, lambda e, protocol: import_cloudpickle().dumps(e, protocol=protocol)):
        try:
            blob = dumps(exc, protocol=5)
            break
        except Exception:  # noqa: BLE001 - fall back to RemoteError
            continue
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = "<str() failed>"
    return blob, f"{type(exc).__module__}.{type(exc).__qualname__}", message, text


def rebuild_exception(payload: tuple) -> BaseException:
    blob, type_name, message, text = payload
    cause = RemoteTraceback(text)
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - e.g. a custom __init__ that unpickling cannot call
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        exc = RemoteError(f"{type_name}: {message}", type_name, text)
    exc.__cause__ = cause
    exc.__suppress_context__ = True
    return exc

