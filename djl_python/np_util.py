"""DJL's NDList wire format ("tensor/ndlist"): a count, then per array the NDAR header,
dtype name, shape and raw little-endian bytes. Also reads npz (a zip, starts with "PK")."""

from __future__ import annotations

import io
import struct

MAGIC = "NDAR"
VERSION = 3


def _put_str(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    out += struct.pack(">h", len(data)) + data


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(bytes(data)), 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated NDList data")
        chunk = self.data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def text(self) -> str:
        return self.take(self.unpack(">h")).decode("utf-8")


def to_nd_list(arrays) -> bytearray:
    import numpy as np

    if not isinstance(arrays, (list, tuple)):
        arrays = [arrays]
    out = bytearray(struct.pack(">i", len(arrays)))
    for array in arrays:
        array = np.ascontiguousarray(array)
        _put_str(out, MAGIC)
        out += struct.pack(">i", VERSION)
        out.append(0)                      # no name
        _put_str(out, "default")           # dense storage
        _put_str(out, array.dtype.name.upper())
        out += struct.pack(">i", array.ndim)
        for dim in array.shape:
            out += struct.pack(">q", dim)
        out += struct.pack(">i", array.ndim)
        for _ in range(array.ndim):
            out += struct.pack(">h", ord("?"))
        out.append(ord("<"))
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        out += struct.pack(">i", len(data)) + data
    return out


def from_nd_list(data) -> list:
    import numpy as np

    data = bytes(data)
    if data[:2] == b"PK":
        archive = np.load(io.BytesIO(data))
        return [archive[name] for name in archive.files]
    reader = _Reader(data)
    arrays = []
    for _ in range(reader.unpack(">i")):
        if reader.text() != MAGIC:
            raise ValueError("not an NDList: missing NDAR magic")
        version = reader.unpack(">i")
        if version != VERSION:
            raise ValueError(f"NDList version {version} is not supported (want {VERSION})")
        if reader.take(1)[0] == 1:
            reader.text()                  # name
        reader.text()                      # storage type
        dtype = reader.text().lower()
        shape = tuple(reader.unpack(">q") for _ in range(reader.unpack(">i")))
        for _ in range(reader.unpack(">i")):
            reader.take(2)                 # layout characters
        order = chr(reader.take(1)[0])
        raw = reader.take(reader.unpack(">i"))
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order)).reshape(shape)
        arrays.append(array)
    return arrays
