"""What a handler's Output says, item by item, in DJL's streaming protocols.

Async-mode and rolling-batch handlers answer in pieces: each piece is a map with `data` (the
bytes or text for the client), `last` (the request is complete), and optionally `code`,
`error`, `content_type` and `properties`. Async-mode handlers write the map with
`Output.binary_encode(...)`; rolling-batch handlers write it as JSON (`add_as_json(...,
batch_index=i)`). A value that is neither is plain data for the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class Piece:
    data: bytes = b""
    last: bool | None = None           # None: the value said nothing (plain bytes)
    code: int | None = None
    error: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


def _as_bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def piece_from_map(item: dict) -> Piece:
    code = item.get("code")
    properties = dict(item.get("properties") or {})
    if item.get("content_type"):
        properties.setdefault("content-type", str(item["content_type"]))
    last = item.get("last")
    if isinstance(last, str):
        last = last.strip().lower() == "true"
    error = item.get("error")
    return Piece(_as_bytes(item.get("data")), None if last is None else bool(last),
                 int(code) if code is not None else None,
                 None if error is None else str(error), properties)


def decode_binary_map(value: bytes) -> dict | None:
    """The map of an `Output.binary_encode(...)` value, or None when the value is not one."""
    from djl_python import Input

    decode = getattr(Input, "binary_decode", None)
    if decode is None:
        return None
    try:
        decoded = decode(bytes(value))
    except Exception:  # noqa: BLE001 - not binary-encoded: plain data
        return None
    return decoded if isinstance(decoded, dict) and "data" in decoded else None


def decode_json_map(value: bytes) -> dict | None:
    """A rolling-batch item: a JSON object with a `data` key."""
    try:
        decoded = json.loads(bytes(value))
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) and "data" in decoded else None


def pieces(values, decoders) -> list[Piece]:
    """Each content value as a Piece, by the first decoder that recognises it."""
    result = []
    for value in values:
        for decode in decoders:
            item = decode(value)
            if item is not None:
                result.append(piece_from_map(item))
                break
        else:
            result.append(Piece(bytes(value)))
    return result
