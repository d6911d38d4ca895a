"""Helpers DJL handlers use to read and write request bodies by content type."""

from __future__ import annotations

import io

from .inputs import Input
from .outputs import Output


def decode(inputs: Input, content_type: str | None = None, key: str | None = None):
    """The request body decoded by its content type (JSON, text, csv, npy/npz or bytes)."""
    content_type = (content_type or inputs.get_property("content-type") or "").lower()
    if content_type.startswith("application/json") or not content_type:
        return inputs.get_as_json(key) if not inputs.is_empty() else None
    if content_type.startswith("text/csv"):
        return inputs.get_as_csv(key)
    if content_type.startswith("text/"):
        return inputs.get_as_string(key)
    if content_type in ("application/x-npy", "tensor/npz", "application/x-npz"):
        import numpy as np

        loaded = np.load(io.BytesIO(bytes(inputs.get_as_bytes(key))), allow_pickle=False)
        return [loaded[n] for n in loaded.files] if hasattr(loaded, "files") else loaded
    if content_type == "tensor/ndlist":
        return inputs.get_as_numpy(key)
    return inputs.get_as_bytes(key)


def encode(outputs: Output, prediction, accept: str | None = None, key: str | None = None,
           batch_index: int | None = None) -> Output:
    """Write a prediction in the accepted type (JSON unless asked otherwise)."""
    accept = (accept or "application/json").lower()
    if "tensor/ndlist" in accept:
        outputs.add_as_numpy(prediction, key=key, batch_index=batch_index)
        outputs.add_property("Content-Type", "tensor/ndlist")
    elif "tensor/npz" in accept:
        outputs.add_as_npz(prediction, key=key, batch_index=batch_index)
        outputs.add_property("Content-Type", "tensor/npz")
    else:
        outputs.add_as_json(prediction, key=key, batch_index=batch_index)
        outputs.add_property("Content-Type", "application/json")
    return outputs
