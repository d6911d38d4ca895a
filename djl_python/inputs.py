"""djl_python.Input: one request (or one dynamic batch of requests) given to a handler."""

from __future__ import annotations

import io
import json
import re

from .np_util import from_nd_list
from .pair_list import PairList

_BATCH_KEY = re.compile(r"^batch_(\d+)[._](.*)$", re.DOTALL)


class Input:
    def __init__(self):
        self.function_name: str | None = None
        self.properties: dict[str, str] = {}
        self.content = PairList()

    def __str__(self) -> str:
        return f"Input(properties={self.properties!r}, content keys={self.content.get_keys()!r})"

    # batches -----------------------------------------------------------------------------
    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list["Input"]:
        """Split a dynamic batch (`batch_NNN.` prefixed keys) into one Input per request."""
        if not self.is_batch():
            return [self]
        batch = [Input() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            match = _BATCH_KEY.match(key)
            if match and key != "batch_size":
                batch[int(match.group(1))].properties[match.group(2)] = value
        for key, value in self.content:
            match = _BATCH_KEY.match(key or "")
            if match:
                batch[int(match.group(1))].content.add(match.group(2), value)
        for item in batch:
            item.function_name = self.function_name
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
        if self.content.is_empty():
            return None
        if key:
            value = self.content.get(key)
            if value is None:
                raise KeyError(f"requested data for key:{key} is not found!")
            return value
        value = self.content.get("data")
        return self.content.value_at(0) if value is None else value

    def get_as_string(self, key: str | None = None) -> str:
        return bytes(self.get_as_bytes(key)).decode("utf-8")

    def get_as_json(self, key: str | None = None):
        return json.loads(bytes(self.get_as_bytes(key)).decode("utf-8"))

    def get_as_numpy(self, key: str | None = None) -> list:
        return from_nd_list(self.get_as_bytes(key))

    def get_as_npz(self, key: str | None = None) -> list:
        import numpy as np

        archive = np.load(io.BytesIO(bytes(self.get_as_bytes(key))))
        return [archive[name] for name in archive.files]

    def get_as_image(self, key: str | None = None):
        from PIL import Image

        return Image.open(io.BytesIO(bytes(self.get_as_bytes(key))))

    def get_as_csv(self, key: str | None = None) -> list:
        import csv

        return list(csv.DictReader(io.StringIO(self.get_as_string(key))))
