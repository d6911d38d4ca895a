"""Run a DJL handler locally, without a server: `python -m djl_python.test_model`.

    python -m djl_python.test_model --model-dir DIR [--entry-point model.py] [--handler handle]
        [--input FILE_OR_TEXT [KEY=FILE_OR_TEXT ...]] [--parameters KEY=VALUE ...]

The helpers build requests (create_*_request) and read outputs (extract_output_as_*) for
handler unit tests; TestHandler loads a handler module and calls it.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import struct
import sys
from types import ModuleType

from .arg_parser import ArgParser
from .inputs import Input
from .np_util import to_nd_list
from .outputs import Output, encode_json
from .pair_list import PairList
from .service_loader import ModelService, load_model_service

# Content-Type of a request by its data file's extension.
CONTENT_TYPE_BY_EXTENSION = {
    ".json": "application/json", ".txt": "text/plain", ".csv": "text/csv",
    ".jsonl": "application/jsonlines", ".gif": "image/gif", ".png": "image/png",
    ".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".ndlist": "tensor/ndlist",
    ".npz": "tensor/npz", ".npy": "application/x-npy",
}


def _new_request(content_type: str, value, key: str | None) -> Input:
    request = Input()
    request.properties["device_id"] = "-1"
    request.properties["content-type"] = content_type
    request.content.add(key=key, value=value)
    return request


def create_text_request(text: str, key: str | None = None) -> Input:
    return _new_request("text/plain", text.encode("utf-8"), key)


def create_json_request(data, key: str | None = None) -> Input:
    return _new_request("application/json", encode_json(data), key)


def create_numpy_request(arrays, key: str | None = None) -> Input:
    return _new_request("tensor/ndlist", bytes(to_nd_list(arrays)), key)


def create_npz_request(arrays, key: str | None = None) -> Input:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *(arrays if isinstance(arrays, (list, tuple)) else [arrays]))
    return _new_request("tensor/npz", buffer.getvalue(), key)


def create_request(input_files, parameters=None) -> Input:
    """A request from CLI-style inputs: files or literal text, each optionally KEY=VALUE.

    parameters ("KEY=VALUE") become properties. The Content-Type comes from the `data` entry
    (else the first): its file extension, or JSON / text for literal values.
    """
    request = Input()
    request.properties["device_id"] = "-1"
    for parameter in parameters or ():
        name, sep, value = parameter.partition("=")
        if not sep:
            raise ValueError(f"Invalid model parameter: {parameter}")
        request.properties[name] = value
    data_file = None
    for item in [input_files] if isinstance(input_files, str) else input_files:
        key, sep, value = item.partition("=")
        if not sep or os.path.exists(item):
            key, value = None, item
        if data_file is None or key == "data":
            data_file = value
        if os.path.exists(value):
            with open(value, "rb") as f:
                request.content.add(key=key, value=f.read())
        else:
            request.content.add(key=key, value=value.encode("utf-8"))
            is_json = value.startswith("{") and value.endswith("}")
            request.properties["content-type"] = "application/json" if is_json else "text/plain"
    extension = os.path.splitext(data_file or "")[1].lower()
    if data_file and os.path.exists(data_file) and extension in CONTENT_TYPE_BY_EXTENSION:
        request.properties["content-type"] = CONTENT_TYPE_BY_EXTENSION[extension]
    return request


def create_concurrent_batch_request(inputs: list, properties: list | None = None,
                                    serving_properties: dict | None = None) -> Input:
    """One dynamic-batch Input of JSON payloads, as the server builds it for batch_size > 1."""
    flat = dict(serving_properties or {})
    for index, item in enumerate(properties or ()):
        for key, value in item.items():
            flat[f"batch_{index:03d}.{key}"] = value
    content = PairList()
    for index, payload in enumerate(inputs):
        content.add(f"batch_{index:03d}.data", encode_json(payload))
    flat["batch_size"] = str(len(inputs))
    request = Input()
    request.properties = flat
    request.function_name = flat.get("handler", "handle")
    request.content = content
    return request


def extract_output_as_input(outputs: Output) -> Input:
    """A read-only view of an Output as an Input, to reuse Input's get_as_* decoders."""
    view = Input()
    view.properties = outputs.properties
    view.content = outputs.content
    return view


def extract_output_as_bytes(outputs: Output, key=None):
    return extract_output_as_input(outputs).get_as_bytes(key)


def extract_output_as_numpy(outputs: Output, key=None):
    return extract_output_as_input(outputs).get_as_numpy(key)


def extract_output_as_npz(outputs: Output, key=None):
    return extract_output_as_input(outputs).get_as_npz(key)


def extract_output_as_string(outputs: Output, key=None):
    return extract_output_as_input(outputs).get_as_string(key)


# Offset-based readers, each returning (value, next offset), for hand-decoding frames.
def retrieve_int(data, start: int):
    return struct.unpack(">i", bytes(data[start:start + 4]))[0], start + 4


def retrieve_short(data, start: int):
    return struct.unpack(">h", bytes(data[start:start + 2]))[0], start + 2


def retrieve_utf8(data, start: int):
    length, start = retrieve_short(data, start)
    if length < 0:
        return None, start
    return bytes(data[start:start + length]).decode("utf-8"), start + length


def decode_encoded_output_binary(binary) -> dict:
    """The dict that Output.binary_encode wrote (values as strings)."""
    return Input.binary_decode(binary)


def load_properties(properties_dir) -> dict:
    """serving.properties of a folder; `option.` is stripped from keys."""
    path = os.path.join(properties_dir, "serving.properties") if properties_dir else None
    if not path or not os.path.exists(path):
        return {}
    properties = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", "!")) or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            properties[key.removeprefix("option.")] = value
    return properties


def update_properties_with_env_vars(kwargs: dict) -> dict:
    """OPTION_FOO=1 as foo=1 (OPTION_ENTRYPOINT as entryPoint), where kwargs lacks the key."""
    for name, value in os.environ.items():
        if name.startswith("OPTION_"):
            key = name[len("OPTION_"):].lower()
            kwargs.setdefault("entryPoint" if key == "entrypoint" else key, value)
    return kwargs


def _resolve(result):
    """The value of an async handler's coroutine; other results as they are."""
    return asyncio.run(_await(result)) if inspect.isawaitable(result) else result


async def _await(awaitable):
    return await awaitable


class TestHandler:
    """A handler module (a model.py path / module name, or a module object) called directly."""

    __test__ = False    # not a pytest test class, despite its name

    def __init__(self, entry_point: str | ModuleType, model_dir: str | None = None):
        model_dir = os.path.abspath(model_dir or os.getcwd())
        # serving.properties wins over OPTION_* variables, as on the server.
        self.serving_properties = update_properties_with_env_vars(load_properties(model_dir))
        if isinstance(entry_point, str):
            if model_dir not in sys.path:
                sys.path.append(model_dir)     # model.py may import its sibling modules
            self.service = load_model_service(model_dir, entry_point, "-1")
        else:
            self.service = ModelService(entry_point, model_dir)

    def inference(self, inputs: Input) -> Output:
        return _resolve(self.service.invoke_handler(inputs.get_function_name(), inputs))

    def inference_batch(self, inputs: list, properties: list | None = None,
                        serving_properties: dict | None = None) -> Output:
        if serving_properties is None:
            serving_properties = self.serving_properties
        return self.inference(
            create_concurrent_batch_request(inputs, properties, serving_properties))

    def inference_rolling_batch(self, inputs: list, properties: list | None = None,
                                serving_properties: dict | None = None) -> dict:
        """Call a rolling-batch handler until every request says last; text per request."""
        results = {index: "" for index in range(len(inputs))}
        live = list(range(len(inputs)))
        while live:
            outputs = self.inference_batch(inputs, properties, serving_properties)
            finished = []
            for position, binary in enumerate(outputs.content.get_values()):
                chunk = decode_encoded_output_binary(binary)
                results[live[position]] += chunk.get("data") or ""
                if (chunk.get("last") or "").lower() == "true":
                    finished.append(position)
            for position in reversed(finished):
                del live[position]
            inputs = [{"inputs": ""} for _ in live]   # later calls only advance the batch
        return results


def _describe(outputs) -> str:
    """What the handler answered: DJL's summary line plus each content entry."""
    if not isinstance(outputs, Output):
        return f"output: {outputs!r}"
    lines = ["output: " + str(outputs)]
    for key, value in outputs.content:
        try:
            shown = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            shown = f"<{len(value)} bytes>"
        lines.append(f"{key}: {shown}")
    if outputs.stream_content is not None:
        formatter = outputs.stream_formatter or (lambda item: item)
        lines += [f"stream: {formatter(item)}" for item in outputs.stream_content]
    return "\n".join(lines)


def run(argv=None) -> Output:
    logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.INFO)
    args = ArgParser.test_model_args().parse_args(argv)
    model_dir = os.path.abspath(args.model_dir or os.getcwd())
    inputs = create_request(args.input, args.parameters)
    os.chdir(model_dir)    # handlers open files relative to their model dir, as on the server
    handler = TestHandler(args.entry_point, model_dir)
    # The request also carries the model's options, which handlers read on their first call.
    inputs.properties = {**handler.serving_properties, **inputs.properties}
    inputs.function_name = args.handler
    outputs = handler.inference(inputs)
    print(_describe(outputs))
    return outputs


if __name__ == "__main__":
    run()
