"""djl_python.Input: one request (or one dynamic batch of requests) given to a handler."""

from __future__ import annotations

import io
import json
import re

from . import wire_format
from .np_util import from_nd_list
from .pair_list import PairList

# DJL has written batch keys as `batch_0.`, `batch_000.` and `batch_000_`; read them all.
_BATCH_KEY = re.compile(r"^batch_(\d+)[._](.*)$", re.DOTALL)


class Input:
    def __init__(self):
        self.function_name: str | None = None
        self.properties: dict[str, str] = {}
        self.content = PairList()

    def __str__(self) -> str:
        # DJL's layout: the properties, then one "key: decoded value" line per content entry.
        lines = [f"properties: {self.get_properties()}"]
        lines += [f"{key}: {self._describe(key)}" for key in self.content.get_keys()]
        return "\n".join(lines)

    def _describe(self, key) -> str:
        # Printing a request must not fail on a body that does not match its Content-Type.
        try:
            return str(self.get_data(key))
        except Exception:  # noqa: BLE001
            return f"<{len(self.content.get(key) or b'')} bytes>"

    # batches -----------------------------------------------------------------------------
    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list["Input"]:
        """Split a dynamic batch into one Input per request.

        Keys `batch_N.<key>` go to request N; properties without a batch prefix are shared by
        every request (the request's own value wins).
        """
        if not self.is_batch():
            return [self]
        batch = [Input() for _ in range(self.get_batch_size())]
        shared = {k: v for k, v in self.properties.items()
                  if k != "batch_size" and not _BATCH_KEY.match(k)}
        for item in batch:
            item.properties.update(shared)
            item.function_name = self.function_name
        for key, value in self.properties.items():
            match = _BATCH_KEY.match(key)
            if match:
                batch[int(match.group(1))].properties[match.group(2)] = value
        for key, value in self.content:
            match = _BATCH_KEY.match(key or "")
            if match is None:
                raise ValueError(f"Unexpected key in batch input: {key}")
            batch[int(match.group(1))].content.add(match.group(2), value)
        return batch

    # properties --------------------------------------------------------------------------
    def get_function_name(self) -> str | None:
        return self.function_name

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def get_property(self, key: str) -> str | None:
        """Case-insensitive lookup, as HTTP headers are."""
        wanted = key.lower()
        return next((v for k, v in self.properties.items() if k.lower() == wanted), None)

    def get_content(self) -> PairList:
        return self.content

    def contains_key(self, key: str) -> bool:
        return self.content.get(key) is not None

    def is_empty(self) -> bool:
        return self.content.is_empty()

    # content -----------------------------------------------------------------------------
    def get_data(self, key: str | None = None):
        """Decode by content-type: JSON, text, NDList, npz or image; raw bytes otherwise."""
        content_type = (self.get_property("content-type") or "").lower()
        if content_type == "tensor/ndlist":
            return self.get_as_numpy(key)
        if content_type == "tensor/npz":
            return self.get_as_npz(key)
        if content_type.startswith("application/json"):
            return self.get_as_json(key)
        if content_type.startswith("text/"):
            return self.get_as_string(key)
        if content_type.startswith("image/"):
            return self.get_as_image(key)
        if self.content.is_empty():
            return None
        return self.get_as_bytes(key)

    def get_as_bytes(self, key: str | None = None):
        """The entry under key; without a key the `data` entry, else the first one."""
        if self.content.is_empty():
            return None
        if key:
            value = self.content.get(key)
            if value is None:
                raise KeyError(f"requested data for key:{key} is not found!")
            return value
        value = self.content.get("data")
        return self.content.value_at(0) if value is None else value

    def _bytes(self, key: str | None) -> bytes:
        value = self.get_as_bytes(key)
        if value is None:
            raise ValueError("the input has no content")
        return bytes(value)

    def get_as_string(self, key: str | None = None) -> str:
        return self._bytes(key).decode("utf-8")

    def get_as_json(self, key: str | None = None):
        return json.loads(self._bytes(key).decode("utf-8"))

    def get_as_numpy(self, key: str | None = None) -> list:
        """The entry as a list of arrays (NDList, or npz when it starts with PK)."""
        return from_nd_list(self._bytes(key))

    def get_as_npz(self, key: str | None = None) -> list:
        import numpy as np

        archive = np.load(io.BytesIO(self._bytes(key)))
        return [archive[name] for name in archive.files]

    def get_as_image(self, key: str | None = None):
        from PIL import Image

        return Image.open(io.BytesIO(self._bytes(key)))

    def get_as_csv(self, key: str | None = None) -> list[dict]:
        """The entry as CSV rows, each a dict keyed by the header line."""
        import csv

        return list(csv.DictReader(io.StringIO(self.get_as_string(key))))

    # DJL's wire format ---------------------------------------------------------------------
    def read(self, conn) -> "Input":
        """Fill this Input from one request frame on a socket (or bytes), as DJL's engine does."""
        reader = wire_format.Reader(conn)
        self.properties.update(wire_format.read_properties(reader))
        for key, value in wire_format.read_content(reader, reader.short()):
            self.content.add(key=key, value=value)
        self.function_name = self.properties.get("handler")
        return self

    @classmethod
    def decode(cls, data) -> "Input":
        """An Input from the bytes of one request frame (the inverse of encode)."""
        return cls().read(data)

    def encode(self) -> bytearray:
        """This Input as the request frame DJL's Java front end sends to Python."""
        return wire_format.encode_request(self.properties, self.content)

    @staticmethod
    def binary_decode(data) -> dict[str, str]:
        """The property map written by Output.binary_encode, values as strings."""
        return wire_format.decode_property_map(data)
