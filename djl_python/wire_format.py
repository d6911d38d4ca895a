"""DJL's binary frames between the Java front end and the Python worker.

Every integer is big-endian. A string is a signed 16-bit byte length then UTF-8 bytes (length
-1 means None); a content value is a signed 32-bit length then the bytes.

request  (Java -> Python): property count (i16), then key/value strings; content count (i16),
         then per entry a key string and a value.
response (Python -> Java): code (i16), message string, property count (i16) and key/value
         strings, content count (i16) and key string + value per entry. A content count of -1
         announces a stream: then frames of one byte (1 = more follow, 0 = last) and a value.
property map (Output.binary_encode): count (i16), then key/value strings; values are str().
"""

from __future__ import annotations

import struct

STREAM_CONTENT = -1


class Reader:
    """Reads frame fields from bytes, or from a socket-like object with recv()."""

    def __init__(self, source):
        if hasattr(source, "recv"):
            self._conn, self._data = source, None
        else:
            self._conn, self._data = None, memoryview(bytes(source))
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self._conn is not None:
            chunks, left = [], n
            while left > 0:
                chunk = self._conn.recv(left)
                if not chunk:
                    raise ValueError("Connection disconnected")
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        if self.pos + n > len(self._data):
            raise ValueError(f"truncated frame: wanted {n} bytes at offset {self.pos}")
        chunk = self._data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def short(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def utf8(self) -> str | None:
        length = self.short()
        return None if length < 0 else self.take(length).decode("utf-8")

    def value(self) -> bytearray | None:
        length = self.int()
        return None if length < 0 else bytearray(self.take(length))

    def at_end(self) -> bool:
        return self._conn is None and self.pos >= len(self._data)


def write_utf8(out: bytearray, text) -> None:
    if text is None:
        out += struct.pack(">h", -1)
        return
    data = str(text).encode("utf-8")
    if len(data) > 0x7FFF:
        raise ValueError(f"string of {len(data)} bytes does not fit DJL's 16-bit length")
    out += struct.pack(">h", len(data)) + data


def write_value(out: bytearray, value) -> None:
    if value is None:
        out += struct.pack(">i", 0)     # Java writes an absent value as empty
        return
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    out += struct.pack(">i", len(data)) + data


def _write_count(out: bytearray, count: int) -> None:
    if count > 0x7FFF:
        raise ValueError(f"{count} entries do not fit DJL's 16-bit count")
    out += struct.pack(">h", count)


def write_properties(out: bytearray, properties: dict) -> None:
    _write_count(out, len(properties))
    for key, value in properties.items():
        write_utf8(out, key)
        write_utf8(out, value)


def read_properties(reader: Reader) -> dict:
    return {reader.utf8(): reader.utf8() for _ in range(reader.short())}


def write_content(out: bytearray, content) -> None:
    _write_count(out, len(content))
    for key, value in content:
        write_utf8(out, key)
        write_value(out, value)


def read_content(reader: Reader, count: int) -> list:
    return [(reader.utf8(), reader.value()) for _ in range(count)]


def encode_property_map(mapping: dict) -> bytearray:
    out = bytearray()
    write_properties(out, {str(k): (None if v is None else str(v)) for k, v in mapping.items()})
    return out


def decode_property_map(data) -> dict:
    return read_properties(Reader(data))


def encode_request(properties: dict, content) -> bytearray:
    out = bytearray()
    write_properties(out, properties)
    write_content(out, content)
    return out


def encode_response_head(code: int, message: str, properties: dict) -> bytearray:
    out = bytearray(struct.pack(">h", int(code)))
    write_utf8(out, message)
    write_properties(out, properties)
    return out


def encode_stream_frame(data, more: bool) -> bytearray:
    out = bytearray(b"\x01" if more else b"\x00")
    write_value(out, data)
    return out
