"""djl_python.Output: what a handler returns (a result, a dynamic batch of results, or a stream)."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from . import wire_format
from .np_util import to_nd_list
from .pair_list import PairList

log = logging.getLogger(__name__)


class _JSONEncoder(json.JSONEncoder):
    """JSON for numpy scalars/arrays and datetimes, which handlers often return."""

    def default(self, obj):
        import datetime

        if isinstance(obj, datetime.datetime):
            return str(obj)
        try:
            import numpy as np

            if isinstance(obj, np.integer):
                return int(obj)
            if isinstance(obj, np.floating):
                return float(obj)
            if isinstance(obj, np.ndarray):
                return obj.tolist()
        except ImportError:
            pass
        return super().default(obj)


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, cls=_JSONEncoder,
                      separators=(",", ":")).encode("utf-8")


def default_stream_formatter(item: Any) -> bytes:
    """Bytes and text pass through; anything else becomes one JSON line."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    return encode_json(item) + b"\n"


class Output:
    def __init__(self, code: int = 200, message: str = "OK"):
        self.code = code
        self.message = message
        self.properties: dict[str, str] = {}
        self.content = PairList()
        self.stream_content = None
        self.stream_formatter: Callable[[Any], Any] | None = None
        self.finalize_function: tuple[Callable, tuple] | None = None

    def __str__(self) -> str:
        content = {key: f"type: {type(value)}" for key, value in self.content}
        return json.dumps({"code": self.code, "message": self.message,
                           "properties": self.properties, "content": content}, indent=2,
                          default=str)

    def set_code(self, code: int) -> "Output":
        self.code = code
        return self

    def set_message(self, message: str) -> "Output":
        self.message = message
        return self

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> "Output":
        """Fail the request: {"code", "type", "message", "error"} with this status."""
        self.code = code
        self.message = message
        self.add_property("content-type", "application/json")
        self.add_as_json({"code": code, "type": "HandlerError", "message": message,
                          "error": str(error)})
        return self

    def add_property(self, key: str, value) -> "Output":
        self.properties[key] = str(value)
        return self

    # content -------------------------------------------------------------------------------
    def add(self, value, key: str | None = None, batch_index: int | None = None) -> "Output":
        """Text is stored as UTF-8, bytes as they are, anything else as JSON."""
        if key is not None and not isinstance(key, str):
            key = str(key)
        if batch_index is not None:
            key = f"batch_{int(batch_index):03d}.{key or ''}"
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
        else:
            value = encode_json(value)
        self.content.add(key=key, value=value)
        return self

    def add_as_string(self, value: str, key: str | None = None,
                      batch_index: int | None = None) -> "Output":
        return self.add(str(value), key=key, batch_index=batch_index)

    def add_as_json(self, value, key: str | None = None, batch_index: int | None = None) -> "Output":
        return self.add(encode_json(value), key=key, batch_index=batch_index)

    def add_as_numpy(self, arrays, key: str | None = None,
                     batch_index: int | None = None) -> "Output":
        return self.add(bytes(to_nd_list(arrays)), key=key, batch_index=batch_index)

    def add_as_npz(self, arrays, key: str | None = None,
                   batch_index: int | None = None) -> "Output":
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, *(arrays if isinstance(arrays, (list, tuple)) else [arrays]))
        return self.add(buffer.getvalue(), key=key, batch_index=batch_index)

    def add_stream_content(self, stream, output_formatter: Callable[[Any], Any] | None = None):
        """Stream the items of an iterator (or async iterator) as chunked HTTP.

        output_formatter turns each item into bytes or text; without one, bytes and text pass
        through and other items become JSON lines.
        """
        self.stream_content = stream
        self.stream_formatter = output_formatter
        return self

    # after the response -------------------------------------------------------------------
    def finalize(self, function: Callable, *args) -> "Output":
        """Call function(*args) after the response (or the stream) has been sent."""
        self.finalize_function = (function, args)
        return self

    def execute_finalize(self):
        """Run the finalize function now; its return value, or None when there is none."""
        if not self.finalize_function:
            return None
        function, args = self.finalize_function
        return function(*args)

    # DJL's wire format ---------------------------------------------------------------------
    @staticmethod
    def binary_encode(mapping: dict) -> bytearray:
        """A dict as DJL's property map (rolling-batch chunks: data, last, code, error).

        Values are written as str(), so True arrives as "True"; Input.binary_decode reads it.
        """
        return wire_format.encode_property_map(mapping)

    def encode(self) -> bytearray:
        """This (non-streaming) Output as the response frame DJL's Java side decodes."""
        out = wire_format.encode_response_head(self.code, self.message, self.properties)
        wire_format.write_content(out, self.content)
        return out

    def send(self, cl_socket) -> None:
        """Write the response frame to a socket; a stream goes as one frame per item."""
        if self.stream_content is None:
            cl_socket.sendall(self.encode())
            return
        head = wire_format.encode_response_head(self.code, self.message, self.properties)
        head += wire_format.STREAM_CONTENT.to_bytes(2, "big", signed=True)
        cl_socket.sendall(head)
        formatter = self.stream_formatter or default_stream_formatter
        try:
            for item in self.stream_content:
                data = formatter(item)
                cl_socket.sendall(wire_format.encode_stream_frame(data, more=True))
        except Exception as exc:  # noqa: BLE001 - the error ends the stream, as in DJL
            log.exception("Failed read streaming content from output")
            cl_socket.sendall(wire_format.encode_stream_frame(str(exc), more=False))
            return
        cl_socket.sendall(wire_format.encode_stream_frame(b"", more=False))

    @classmethod
    def decode(cls, data) -> "Output":
        """An Output from a response frame (what DJL's Java OutputDecoder reads).

        A streamed response comes back with its frames joined into one content entry.
        """
        reader = wire_format.Reader(data)
        output = cls(reader.short(), reader.utf8())
        output.properties.update(wire_format.read_properties(reader))
        count = reader.short()
        if count != wire_format.STREAM_CONTENT:
            for key, value in wire_format.read_content(reader, count):
                output.content.add(key=key, value=bytes(value or b""))
            return output
        chunks, more = [], True
        while more:
            more = reader.byte() == 1
            chunks.append(bytes(reader.value() or b""))
        output.content.add(key=None, value=b"".join(chunks))
        return output
