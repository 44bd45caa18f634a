"""The wire encoding of remote policy calls: explicit, typed, never pickle.

Values are tagged: ``None``, bools, ints, floats, strings, bytes, lists, tuples, dicts,
numpy arrays and scalars (dtype, shape, raw bytes) and the policy contract's
:class:`~aiofranka.policy.Frame`, :class:`~aiofranka.policy.ChunkRequest`,
:class:`~aiofranka.policy.Action` and :class:`~aiofranka.policy.Command`. Decoding builds only
those types, so a peer's bytes can at worst raise :class:`CodecError`. Layout: docs/remote.md#the-wire.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

__all__ = ["CodecError", "decode", "encode", "encode_call"]

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")

#: dtype kinds an array may have on the wire: bool, ints, floats, complex (no objects, no records).
_ARRAY_KINDS = frozenset("biufc")
_MAX_DEPTH = 64
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


class CodecError(ValueError):
    """Bytes that are not a valid encoding (truncated, unknown tag, a refused dtype...)."""


def _contract():
    from ..policy.contract import Action, ChunkRequest, Command, Frame

    return Action, ChunkRequest, Command, Frame


# -------------------------------------------------------------------------- encoding


def encode(value) -> bytes:
    """``value`` as bytes; ``TypeError`` naming the path of a value that has no encoding."""
    parts: list = []
    _encode(value, parts, "value", 0)
    return b"".join(parts)


def encode_call(name: str, args: tuple, kwargs: dict) -> bytes:
    """``(name, args, kwargs)`` as bytes; a ``TypeError`` names the argument (``args[0]['image']``)."""
    parts: list = [b"t" + _U32.pack(3)]
    _encode(name, parts, "name", 1)
    _encode(args, parts, "args", 1)
    _encode(kwargs, parts, "kwargs", 1)
    return b"".join(parts)


def _encode_array(array: np.ndarray, parts: list, path: str, tag: bytes) -> None:
    dtype = array.dtype
    if dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"{path}: arrays of dtype {dtype} cannot be sent (numbers and bools only)")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    code = dtype.str.encode("ascii")  # keeps the byte order: '<f8', '|u1'
    parts.append(tag + _U8.pack(len(code)) + code + _U8.pack(array.ndim)
                 + b"".join(_U64.pack(n) for n in array.shape))
    parts.append(memoryview(array.reshape(-1).view(np.uint8)) if array.size else b"")  # copied once, by the join


def _encode(value, parts: list, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise TypeError(f"{path}: nested more than {_MAX_DEPTH} levels deep")
    kind = type(value)
    if value is None:
        parts.append(b"N")
    elif kind is bool:
        parts.append(b"T" if value else b"F")
    elif kind is int:
        if _I64_MIN <= value <= _I64_MAX:
            parts.append(b"i" + _I64.pack(value))
        else:
            text = str(value).encode("ascii")
            parts.append(b"I" + _U32.pack(len(text)) + text)
    elif kind is float:
        parts.append(b"f" + _F64.pack(value))
    elif kind is str:
        data = value.encode("utf-8")
        parts.append(b"s" + _U32.pack(len(data)) + data)
    elif kind is bytes or kind is bytearray:
        parts.append(b"b" + _U32.pack(len(value)) + bytes(value))
    elif kind is np.ndarray:
        _encode_array(value, parts, path, b"a")
    elif isinstance(value, np.generic):
        _encode_array(np.asarray(value), parts, path, b"n")
    elif kind is list or kind is tuple:
        parts.append((b"l" if kind is list else b"t") + _U32.pack(len(value)))
        for index, item in enumerate(value):
            _encode(item, parts, f"{path}[{index}]", depth + 1)
    elif kind is dict:
        _encode_dict(value, parts, path, depth, b"d")
    else:
        _encode_other(value, parts, path, depth)


def _encode_dict(value, parts: list, path: str, depth: int, tag: bytes) -> None:
    parts.append(tag + _U32.pack(len(value)))
    for key, item in value.items():
        _encode(key, parts, f"{path} key", depth + 1)
        _encode(item, parts, f"{path}[{key!r}]", depth + 1)


def _encode_other(value, parts: list, path: str, depth: int) -> None:
    Action, ChunkRequest, Command, Frame = _contract()
    if isinstance(value, Action):
        _encode_dict(value.commands, parts, path, depth, b"A")
    elif isinstance(value, Command):
        parts.append(b"C")
        for field in (value.kind, value.value, value.ref_frame, dict(value.meta)):
            _encode(field, parts, f"{path}.command", depth + 1)
    elif isinstance(value, (Frame, ChunkRequest)):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        _encode_dict(fields, parts, path, depth, b"R" if isinstance(value, Frame) else b"Q")
    elif isinstance(value, (bool, int, float, str)):  # subclasses (IntEnum, np.float64...) as the plain type
        for plain in (bool, int, float, str):
            if isinstance(value, plain):
                _encode(plain(value), parts, path, depth)
                return
    else:
        raise TypeError(f"{path}: {type(value).__name__} cannot be sent to or from a remote policy "
                        f"(use numbers, strings, bytes, lists, tuples, dicts, numpy arrays or the policy "
                        f"contract's Frame, ChunkRequest, Action, Command)")


# -------------------------------------------------------------------------- decoding


def decode(data) -> object:
    """The value encoded in ``data`` (bytes or a memoryview); :class:`CodecError` if it is not one."""
    view = memoryview(data).cast("B")
    try:
        value, end = _decode(view, 0, 0)
    except CodecError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
        raise CodecError(f"malformed encoding: {exc}") from None
    except (TypeError, ValueError) as exc:  # a contract type refused its fields
        raise CodecError(f"invalid value: {exc}") from None
    if end != len(view):
        raise CodecError(f"{len(view) - end} trailing bytes after the value")
    return value


def _need(view, offset: int, count: int) -> int:
    end = offset + count
    if count < 0 or end > len(view):
        raise CodecError(f"truncated: {count} bytes needed at offset {offset}, {len(view) - offset} left")
    return end


def _decode_array(view, offset: int):
    (size,) = _U8.unpack_from(view, offset)
    offset += 1
    end = _need(view, offset, size)
    try:
        dtype = np.dtype(bytes(view[offset:end]).decode("ascii"))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"unknown dtype: {exc}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"refused dtype {dtype} (numbers and bools only)")
    (ndim,) = _U8.unpack_from(view, end)
    offset = end + 1
    if ndim > 32:
        raise CodecError(f"refused an array of {ndim} dimensions")
    shape = struct.unpack_from(f"<{ndim}Q", view, offset)
    offset += 8 * ndim
    count = 1
    for n in shape:
        count *= n
    end = _need(view, offset, count * dtype.itemsize)
    # A fresh, writable array that owns its memory (the message buffer is not kept alive).
    array = np.frombuffer(view[offset:end], dtype=dtype, count=count).reshape(shape).copy()
    return array, end


def _decode(view, offset: int, depth: int):
    if depth > _MAX_DEPTH:
        raise CodecError(f"nested more than {_MAX_DEPTH} levels deep")
    tag = view[offset]
    offset += 1
    if tag == 0x4E:  # N
        return None, offset
    if tag == 0x54:  # T
        return True, offset
    if tag == 0x46:  # F
        return False, offset
    if tag == 0x69:  # i
        return _I64.unpack_from(view, offset)[0], offset + 8
    if tag == 0x66:  # f
        return _F64.unpack_from(view, offset)[0], offset + 8
    if tag in (0x73, 0x62, 0x49):  # s, b, I
        (size,) = _U32.unpack_from(view, offset)
        offset += 4
        end = _need(view, offset, size)
        raw = bytes(view[offset:end])
        if tag == 0x73:
            return raw.decode("utf-8"), end
        if tag == 0x62:
            return raw, end
        if size > 4300 or not raw.lstrip(b"-").isdigit():
            raise CodecError("malformed big integer")
        return int(raw), end
    if tag == 0x61:  # a
        return _decode_array(view, offset)
    if tag == 0x6E:  # n: a numpy scalar
        array, end = _decode_array(view, offset)
        if array.ndim != 0:
            raise CodecError("a numpy scalar with a shape")
        return array[()], end
    if tag in (0x6C, 0x74):  # l, t
        (count,) = _U32.unpack_from(view, offset)
        offset += 4
        _need(view, offset, count)  # every item takes at least one byte: refuse absurd counts early
        items = []
        for _ in range(count):
            item, offset = _decode(view, offset, depth + 1)
            items.append(item)
        return (items if tag == 0x6C else tuple(items)), offset
    if tag in (0x64, 0x41, 0x52, 0x51):  # d, A (Action), R (Frame), Q (ChunkRequest)
        items, offset = _decode_pairs(view, offset, depth)
        if tag == 0x64:
            return items, offset
        Action, ChunkRequest, _, Frame = _contract()
        if tag == 0x41:
            return Action(items), offset
        cls = Frame if tag == 0x52 else ChunkRequest
        names = {f.name for f in dataclasses.fields(cls)}
        if not set(items) <= names:
            raise CodecError(f"unknown {cls.__name__} fields {sorted(map(str, set(items) - names))}")
        if cls is ChunkRequest and items.get("prev_action_chunk") is not None:
            items["prev_action_chunk"] = tuple(items["prev_action_chunk"])
        return cls(**items), offset
    if tag == 0x43:  # C (Command)
        fields = []
        for _ in range(4):
            field, offset = _decode(view, offset, depth + 1)
            fields.append(field)
        kind, value, ref_frame, meta = fields
        if not isinstance(kind, str) or not isinstance(value, np.ndarray) or not isinstance(meta, dict):
            raise CodecError("malformed Command")
        return _contract()[2](kind, value, ref_frame, meta), offset
    raise CodecError(f"unknown tag {tag:#04x} at offset {offset - 1}")


def _decode_pairs(view, offset: int, depth: int):
    (count,) = _U32.unpack_from(view, offset)
    offset += 4
    _need(view, offset, 2 * count)
    items = {}
    for _ in range(count):
        key, offset = _decode(view, offset, depth + 1)
        try:
            hash(key)
        except TypeError:
            raise CodecError(f"an unhashable dict key ({type(key).__name__})") from None
        items[key], offset = _decode(view, offset, depth + 1)
    return items, offset
