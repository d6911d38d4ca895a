"""AWS event stream encoding (application/vnd.amazon.eventstream), as SageMaker streams replies.

botocore only decodes this format, so we write it. One message is

    prelude:  total length (u32) | headers length (u32) | CRC32 of those 8 bytes (u32)
    headers:  name length (u8) | name (UTF-8) | value type (u8) | value
    payload:  the bytes
    trailer:  CRC32 of everything before it (u32)

all integers big-endian. InvokeEndpointWithResponseStream sends each piece of the model's
answer as a `PayloadPart` event whose payload is the piece's bytes, and a failure mid-stream as
an exception event (`ModelStreamError`) whose payload is a JSON {"Message", "ErrorCode"}.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Mapping, Union

CONTENT_TYPE = "application/vnd.amazon.eventstream"

# Header value type tags used here (the format also has byte, short, long, timestamp, uuid).
_TRUE, _FALSE, _INT32, _BYTES, _STRING = 0, 1, 4, 6, 7
_PRELUDE = struct.Struct(">II")
_U32 = struct.Struct(">I")
# Limits of the format (botocore rejects larger messages).
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024

HeaderValue = Union[str, bytes, bool, int]


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode("utf-8")
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name {name!r}: 1 to 255 bytes")
    out = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):                      # before int: bool is an int
        return out + bytes([_TRUE if value else _FALSE])
    if isinstance(value, int):
        return out + bytes([_INT32]) + struct.pack(">i", value)
    if isinstance(value, str):
        tag, data = _STRING, value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        tag, data = _BYTES, bytes(value)
    else:
        raise TypeError(f"header {name!r}: unsupported value type {type(value).__name__}")
    if len(data) > 0xFFFF:
        raise ValueError(f"header {name!r}: value over 65535 bytes")
    return out + bytes([tag]) + struct.pack(">H", len(data)) + data


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """One event-stream message with the given headers (in order) and payload."""
    encoded_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    if len(encoded_headers) > MAX_HEADERS_LENGTH:
        raise ValueError("event-stream headers over 128 KiB")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event-stream payload over 16 MiB: split it into several messages")
    total = _PRELUDE.size + 4 + len(encoded_headers) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(encoded_headers))
    head = prelude + _U32.pack(zlib.crc32(prelude))
    body = head + encoded_headers + payload
    return body + _U32.pack(zlib.crc32(body))


def event(event_type: str, payload: bytes,
          content_type: str = "application/octet-stream") -> bytes:
    return encode_message({":event-type": event_type, ":content-type": content_type,
                           ":message-type": "event"}, payload)


def payload_part(data: bytes) -> bytes:
    """SageMaker's `PayloadPart` event: {"PayloadPart": {"Bytes": data}} once parsed."""
    return event("PayloadPart", data)


def exception(exception_type: str, message: str, error_code: str | None = None) -> bytes:
    """A modeled exception event (e.g. ModelStreamError) that ends the stream for the client."""
    body = {"Message": message}
    if error_code:
        body["ErrorCode"] = error_code
    return encode_message({":exception-type": exception_type,
                           ":content-type": "application/json",
                           ":message-type": "exception"}, json.dumps(body).encode("utf-8"))


def split(data: bytes, size: int = 1024 * 1024) -> list[bytes]:
    """Pieces of at most `size` bytes (a PayloadPart must stay under the format's limit)."""
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]
