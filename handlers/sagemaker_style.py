"""Serve a module written in SageMaker's inference-toolkit style through the DJL contract.

model_fn(model_dir) loads once; per request input_fn(body, content_type) -> predict_fn(data,
model) -> output_fn(prediction, accept). Missing input_fn/output_fn default to JSON, text and
npy; a missing predict_fn calls the model.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

from djl_python import Input, Output


def default_input_fn(body: bytes, content_type: str | None):
    content_type = (content_type or "application/json").split(";")[0].strip().lower()
    if content_type == "application/json":
        return json.loads(body.decode("utf-8"))
    if content_type.startswith("text/"):
        return body.decode("utf-8")
    if content_type == "application/x-npy":
        import numpy as np

        return np.load(io.BytesIO(body), allow_pickle=False)
    return body


def default_output_fn(prediction, accept: str | None):
    accept = (accept or "application/json").split(",")[0].split(";")[0].strip().lower()
    if accept in ("application/x-npy",):
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(prediction), allow_pickle=False)
        return buffer.getvalue(), accept
    if isinstance(prediction, (bytes, bytearray)):
        return bytes(prediction), "application/octet-stream"
    if hasattr(prediction, "tolist"):
        prediction = prediction.tolist()
    return json.dumps(prediction), "application/json"


def _call(function, *args):
    """Call with as many positional arguments as the function accepts (context is optional)."""
    try:
        count = len(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        count = len(args)
    return function(*args[:max(count, 1)])


class SageMakerStyleHandler:
    def __init__(self, module, model_dir: Path):
        self.module = module
        self.model_dir = model_dir
        self.model = None
        self.loaded = False

    def _load(self, properties: dict) -> None:
        model_fn = getattr(self.module, "model_fn", None)
        self.model = _call(model_fn, str(self.model_dir), properties) if model_fn else None
        self.loaded = True

    def _predict_one(self, item: Input):
        body = bytes(item.get_as_bytes() or b"")
        content_type = item.get_property("Content-Type")
        accept = item.get_property("Accept")
        input_fn = getattr(self.module, "input_fn", None)
        data = _call(input_fn, body, content_type) if input_fn else default_input_fn(body, content_type)
        predict_fn = getattr(self.module, "predict_fn", None)
        prediction = _call(predict_fn, data, self.model) if predict_fn else self.model(data)
        output_fn = getattr(self.module, "output_fn", None)
        result = _call(output_fn, prediction, accept) if output_fn else default_output_fn(prediction, accept)
        if isinstance(result, tuple) and len(result) == 2:
            return result
        return result, accept if accept and accept != "*/*" else "application/json"

    def __call__(self, inputs: Input):
        if not self.loaded:
            self._load(inputs.get_properties())
            if inputs.is_empty():
                return None
        if inputs.is_empty():
            return None
        output = Output()
        batch = inputs.get_batches()
        for index, item in enumerate(batch):
            body, content_type = self._predict_one(item)
            output.add(body, batch_index=index if inputs.is_batch() else None)
            output.add_property("Content-Type", content_type)
        return output
