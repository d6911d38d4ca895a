"""djl_python.test_model: run a handler written in a temp dir, from the CLI and in-process."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from djl_python import Output
from djl_python.service_loader import get_annotated_function, load_model_service
from djl_python.test_model import (TestHandler, create_json_request, create_request,
                                   extract_output_as_string, load_properties)

ROOT = Path(__file__).resolve().parents[1]

HANDLER = '''
from djl_python import Input, Output
import helper  # a sibling module of model.py

options = {}

def handle(inputs: Input):
    if not options:
        options.update(inputs.get_properties())
    if inputs.is_empty():
        return None
    body = inputs.get_as_json() if "json" in (inputs.get_property("content-type") or "") \\
        else inputs.get_as_string()
    return Output().add_as_json({"echo": body, "greeting": options.get("greeting"),
                                 "suffix": helper.SUFFIX,
                                 "content_type": inputs.get_property("content-type")})

def shout(inputs: Input):
    return Output().add(inputs.get_as_string().upper() + "!")

def batch(inputs: Input):
    out = Output()
    for i, item in enumerate(inputs.get_batches()):
        out.add_as_json({"n": item.get_as_json()["n"] * 10, "tag": item.get_property("tag")},
                        batch_index=i)
    return out

steps = {}

def rolling(inputs: Input):
    out = Output()
    for i, item in enumerate(inputs.get_batches()):
        count = steps.get(i, 0) + 1
        steps[i] = count
        last = count >= 2 + i
        out.add(Output.binary_encode({"data": f"t{count} ", "last": last}),
                key="data", batch_index=i)
    return out

async def ahandle(inputs: Input):
    return Output().add("async:" + inputs.get_as_string())
'''


def model_dir(tmp_path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.py").write_text(HANDLER)
    (directory / "helper.py").write_text("SUFFIX = 'from-helper'\n")
    (directory / "serving.properties").write_text(
        "engine=Python\noption.greeting=hello\n# comment\n")
    return directory


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "djl_python.test_model", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def body_line(stdout: str) -> dict:
    """The JSON content line the CLI prints after DJL's summary."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("None: "))[6:])


def test_cli_runs_handler_with_file_input(tmp_path):
    directory = model_dir(tmp_path)
    payload = tmp_path / "input.json"
    payload.write_text('{"q": [1, 2]}')
    result = run_cli("--model-dir", str(directory), "--input", str(payload), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"code": 200' in result.stdout
    body = body_line(result.stdout)
    assert body == {"echo": {"q": [1, 2]}, "greeting": "hello", "suffix": "from-helper",
                    "content_type": "application/json"}


def test_cli_handler_flag_parameters_and_literal_text(tmp_path):
    directory = model_dir(tmp_path)
    result = run_cli("--model-dir", str(directory), "--handler", "shout", "--input", "hey",
                     "--parameters", "greeting=ignored", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "None: HEY!" in result.stdout
    bad = run_cli("--model-dir", str(directory), "--parameters", "novalue", cwd=tmp_path)
    assert bad.returncode != 0 and "Invalid model parameter" in bad.stderr


def test_cli_async_handler(tmp_path):
    directory = model_dir(tmp_path)
    result = run_cli("--model-dir", str(directory), "--handler", "ahandle", "--input", "x",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "None: async:x" in result.stdout


def test_create_request_types_and_keys(tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG fake")
    request = create_request([f"data={image}", "meta={\"a\": 1}"], ["k=v=w"])
    assert request.get_property("content-type") == "image/png"
    assert request.get_property("k") == "v=w"
    assert bytes(request.get_as_bytes()) == b"\x89PNG fake"
    assert json.loads(request.get_as_string("meta")) == {"a": 1}
    assert create_request(["plain words"]).get_property("content-type") == "text/plain"


def test_test_handler_in_process_batch_and_rolling_batch(tmp_path):
    directory = model_dir(tmp_path)
    handler = TestHandler("model.py", str(directory))
    assert handler.serving_properties == {"engine": "Python", "greeting": "hello"}
    reply = handler.inference(create_json_request({"x": 1}))
    assert json.loads(extract_output_as_string(reply))["echo"] == {"x": 1}

    out = handler.inference_batch([{"n": 1}, {"n": 2}], [{"tag": "a"}, {"tag": "b"}],
                                  serving_properties={"handler": "batch"})
    assert [json.loads(v) for v in out.content.get_values()] == [
        {"n": 10, "tag": "a"}, {"n": 20, "tag": "b"}]
    assert out.content.get_keys() == ["batch_000.", "batch_001."]

    handler.serving_properties["handler"] = "rolling"
    result = handler.inference_rolling_batch([{"inputs": "a"}, {"inputs": "b"}])
    assert result == {0: "t1 t2 ", 1: "t1 t2 t3 "}


def test_test_handler_accepts_a_module_and_numpy_helpers(tmp_path):
    import types

    module = types.ModuleType("inline_handler")
    module.handle = lambda inputs: Output().add_as_numpy([inputs.get_as_numpy()[0] * 2])
    from djl_python.test_model import create_numpy_request, extract_output_as_numpy

    handler = TestHandler(module, str(tmp_path))
    out = handler.inference(create_numpy_request([np.arange(3)]))
    assert extract_output_as_numpy(out)[0].tolist() == [0, 2, 4]


def test_load_properties_strips_option_prefix(tmp_path):
    (tmp_path / "serving.properties").write_text("option.model_id=m\nbatch_size = 4\n")
    assert load_properties(str(tmp_path)) == {"model_id": "m", "batch_size": "4"}
    assert load_properties(None) == {}


def test_service_loader_keeps_two_model_files_apart(tmp_path):
    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text(f"VALUE = {value}\n")
    first = load_model_service(str(tmp_path / "a"), "model.py", "-1")
    second = load_model_service(str(tmp_path / "b"), "model.py", "-1")
    assert (first.module.VALUE, second.module.VALUE) == (1, 2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.py").write_text(
        "def fmt(x):\n    return x + '!'\nfmt.is_output_formatter = True\n")
    assert get_annotated_function(str(tmp_path / "c"), "is_output_formatter")("z") == "z!"
    assert get_annotated_function(str(tmp_path / "nothing"), "is_output_formatter") is None
