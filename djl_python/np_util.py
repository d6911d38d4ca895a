"""DJL's NDList wire format ("tensor/ndlist"): a count, then per array the NDAR header,
dtype name, shape and raw little-endian bytes. Also reads npz (a zip, starts with "PK").

The set_* / get_* helpers are DJL's public byte codecs (big-endian); each get_* returns
(value, next index).
"""

from __future__ import annotations

import io
import struct

MAGIC_NUMBER = "NDAR"
MAGIC = MAGIC_NUMBER
VERSION = 3


def set_int(value: int) -> bytes:
    return struct.pack(">i", value)


def set_long(value: int) -> bytes:
    return struct.pack(">q", value)


def set_str(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">h", len(data)) + data


def set_char(value: str) -> bytes:
    return struct.pack(">h", ord(value))


def get_byte_as_int(encoded, idx: int) -> tuple[int, int]:
    return encoded[idx], idx + 1


def get_bytes(encoded, idx: int, length: int) -> tuple[bytes, int]:
    if idx + length > len(encoded):
        raise ValueError("truncated NDList data")
    return bytes(encoded[idx:idx + length]), idx + length


def _unpack(fmt: str, encoded, idx: int):
    raw, idx = get_bytes(encoded, idx, struct.calcsize(fmt))
    return struct.unpack(fmt, raw)[0], idx


def get_int(encoded, idx: int) -> tuple[int, int]:
    return _unpack(">i", encoded, idx)


def get_long(encoded, idx: int) -> tuple[int, int]:
    return _unpack(">q", encoded, idx)


def get_char(encoded, idx: int) -> tuple[str, int]:
    code, idx = _unpack(">h", encoded, idx)
    return chr(code), idx


def get_str(encoded, idx: int) -> tuple[str, int]:
    length, idx = _unpack(">h", encoded, idx)
    raw, idx = get_bytes(encoded, idx, length)
    return raw.decode("utf-8"), idx


def to_nd_list(arrays) -> bytearray:
    import numpy as np

    if not isinstance(arrays, (list, tuple)):
        arrays = [arrays]
    out = bytearray(set_int(len(arrays)))
    for array in arrays:
        array = np.ascontiguousarray(array)
        out += set_str(MAGIC_NUMBER) + set_int(VERSION)
        out.append(0)                      # no name
        out += set_str("default")          # dense storage
        out += set_str(array.dtype.name.upper())
        out += set_int(array.ndim) + b"".join(set_long(dim) for dim in array.shape)
        out += set_int(array.ndim) + set_char("?") * array.ndim   # layout: unknown
        out.append(ord("<"))
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        out += set_int(len(data)) + data
    return out


def from_nd_list(data) -> list:
    import numpy as np

    data = bytes(data)
    if data[:2] == b"PK":
        archive = np.load(io.BytesIO(data))
        return [archive[name] for name in archive.files]
    count, idx = get_int(data, 0)
    arrays = []
    for _ in range(count):
        magic, idx = get_str(data, idx)
        if magic != MAGIC_NUMBER:
            raise ValueError("not an NDList: missing NDAR magic")
        version, idx = get_int(data, idx)
        if version != VERSION:
            raise ValueError(f"NDList version {version} is not supported (want {VERSION})")
        has_name, idx = get_byte_as_int(data, idx)
        if has_name == 1:
            _, idx = get_str(data, idx)
        _, idx = get_str(data, idx)        # storage type
        dtype, idx = get_str(data, idx)
        ndim, idx = get_int(data, idx)
        shape = []
        for _ in range(ndim):
            dim, idx = get_long(data, idx)
            shape.append(dim)
        layout, idx = get_int(data, idx)
        idx += 2 * layout
        order, idx = get_byte_as_int(data, idx)
        length, idx = get_int(data, idx)
        raw, idx = get_bytes(data, idx, length)
        dt = np.dtype(dtype.lower()).newbyteorder(chr(order))
        arrays.append(np.frombuffer(raw, dtype=dt).reshape(tuple(shape)))
    return arrays
