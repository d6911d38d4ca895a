"""DJL-style handlers through `serve` and HTTP: batching, errors, async, streaming, styles."""

from __future__ import annotations

import concurrent.futures as futures
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import handler_dir, write_model


def post(server, payload, path="/invocations", headers=None, timeout=30):
    return requests.post(server.url(path), json=payload, headers=headers, timeout=timeout)


def assert_error(response, status, type_=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"code", "type", "message"}, body
    assert body["code"] == status
    if type_:
        assert body["type"] == type_, body
    assert "Traceback" not in response.text
    return body


def assert_still_serves(server, payload=None):
    response = post(server, payload or {"action": "ok"})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    from conftest import ServeProcess

    directory = handler_dir(tmp_path_factory.mktemp("echo"), "echo",
                            "batch_size=4\nmax_batch_delay=300\noption.custom_option=hello\n")
    server = ServeProcess(directory).start()
    yield server
    server.stop()


def test_echo_single_request(echo_server):
    response = post(echo_server, {"hello": "world"})
    assert response.status_code == 200
    body = response.json()
    assert body["echo"] == {"hello": "world"}
    assert body["content_type"] == "application/json"      # case-insensitive get_property
    assert body["init_option"] == "hello"                   # first call carried the options
    assert body["init_model_dir"].endswith("echo")
    assert body["init_tp"] == "1"


def test_dynamic_batching_groups_concurrent_requests(echo_server):
    payloads = [{"n": i} for i in range(8)]
    with futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda p: post(echo_server, p), payloads))
    bodies = [r.json() for r in responses]
    assert [b["echo"] for b in bodies] == payloads          # each got its own answer back
    assert max(b["batch_size"] for b in bodies) > 1          # and some were batched together
    assert all(b["batch_size"] <= 4 for b in bodies)


def test_text_and_binary_bodies(echo_server):
    text = requests.post(echo_server.url("/invocations"), data="plain words".encode(),
                         headers={"Content-Type": "text/plain"}, timeout=10)
    assert text.json()["echo"] == "plain words"


def test_request_id_and_custom_attributes(echo_server):
    response = post(echo_server, {"x": 1}, headers={
        "X-Amzn-SageMaker-Inference-Id": "my-id-123",
        "X-Amzn-SageMaker-Custom-Attributes": "tenant=blue; accept_eula=true"})
    assert response.headers["X-Amzn-SageMaker-Inference-Id"] == "my-id-123"
    assert response.headers["X-Request-Id"] == "my-id-123"
    assert response.json()["tenant"] == "blue"
    other = post(echo_server, {"x": 1}, headers={"x-request-id": "abc"})
    assert other.headers["X-Request-Id"] == "abc"


def test_djl_routes(echo_server):
    name = echo_server.model_name()
    assert requests.post(echo_server.url(f"/predictions/{name}"), json={"a": 1},
                         timeout=10).json()["echo"] == {"a": 1}
    described = requests.get(echo_server.url(f"/models/{name}"), timeout=10).json()
    assert described[0]["modelName"] == name and described[0]["batchSize"] == 4
    assert_error(requests.post(echo_server.url("/predictions/other"), json={}, timeout=10), 404,
                 "ModelNotFound")
    assert_error(requests.get(echo_server.url("/models/other"), timeout=10), 404)
    assert_error(requests.get(echo_server.url("/no/such/route"), timeout=10), 404)
    assert_error(requests.get(echo_server.url("/invocations"), timeout=10), 405)
    assert post(echo_server, {"still": "ok"}).status_code == 200


def test_malformed_json_is_400_and_server_stays_healthy(echo_server):
    response = requests.post(echo_server.url("/invocations"), data=b'{"a": ',
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(response, 400, "BadRequest")
    assert post(echo_server, {"after": "bad"}).json()["echo"] == {"after": "bad"}


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    from conftest import ServeProcess

    directory = handler_dir(tmp_path_factory.mktemp("faulty"), "faulty",
                            "job_queue_size=2\npredict_timeout=3\n")
    server = ServeProcess(directory, env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}).start()
    yield server
    server.stop()


def test_handler_exception_is_424(faulty_server):
    body = assert_error(post(faulty_server, {"action": "raise"}), 424, "HandlerError")
    assert "refused this input" in body["message"]
    assert_still_serves(faulty_server)


def test_output_error_is_424_with_djl_body(faulty_server):
    body = assert_error(post(faulty_server, {"action": "error"}), 424)
    assert body["error"] == "custom failure message"
    assert_still_serves(faulty_server)


def test_memory_error_is_507(faulty_server):
    assert_error(post(faulty_server, {"action": "memory"}), 507, "OutOfMemory")
    assert_still_serves(faulty_server)


def test_handler_that_really_exhausts_memory_is_507(faulty_server):
    """Not a raised MemoryError: the handler allocates until its address space runs out."""
    body = assert_error(post(faulty_server, {"action": "exhaust"}), 507, "OutOfMemory")
    assert "Traceback" not in body["message"]
    assert_still_serves(faulty_server)


def test_body_over_limit_is_413(faulty_server):
    big = {"action": "ok", "pad": "x" * (1024 * 1024 + 10)}
    assert_error(post(faulty_server, big), 413, "PayloadTooLarge")
    assert_still_serves(faulty_server)


def test_queue_full_is_503_with_retry_after(faulty_server):
    slow = {"action": "sleep", "seconds": 1.5}
    with futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(post, faulty_server, slow) for _ in range(6)]
        responses = [j.result() for j in jobs]
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2, codes            # job_queue_size=2 were accepted and served
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, codes
    for r in rejected:
        assert_error(r, 503, "QueueFull")
        assert r.headers["Retry-After"]
    assert_still_serves(faulty_server)


def test_predict_timeout_is_504_then_worker_restarts(faulty_server):
    started = time.monotonic()
    body = assert_error(post(faulty_server, {"action": "sleep", "seconds": 30}), 504,
                        "PredictTimeout")
    assert time.monotonic() - started < 10
    assert "predict_timeout" in body["message"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(faulty_server.url("/ping"), timeout=2).status_code == 200:
            response = post(faulty_server, {"action": "ok"})
            if response.status_code == 200:
                break
        time.sleep(0.3)
    assert_still_serves(faulty_server)


def test_batch_output_count_mismatch(tmp_path, serve_factory):
    directory = handler_dir(tmp_path, "faulty", "batch_size=4\nmax_batch_delay=500\n")
    server = serve_factory(directory).start()
    with futures.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: post(server, {"action": "mismatch"}), range(3)))
    mismatched = [r for r in responses if r.status_code == 424]
    assert mismatched, [r.text for r in responses]
    message = assert_error(mismatched[0], 424, "BatchSizeMismatch")["message"]
    assert "batch_index" in message and "request(s)" in message
    assert post(server, {"action": "ok"}).status_code == 200


def test_async_handler_serves_concurrently(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "async_echo")).start()
    started = time.monotonic()
    with futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: post(server, {"i": i, "delay": 1.0}), range(4)))
    elapsed = time.monotonic() - started
    assert [r.json()["async_echo"]["i"] for r in responses] == [0, 1, 2, 3]
    assert elapsed < 3.0, f"async requests ran one after another ({elapsed:.1f}s)"


def test_streaming_handler_streams_chunks(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "streaming")).start()
    started = time.monotonic()
    arrivals = []
    with requests.post(server.url("/invocations"), json={"count": 5, "delay": 0.3},
                       stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/jsonlines"
        for line in response.iter_lines():
            if line:
                arrivals.append((time.monotonic() - started, json.loads(line)))
    assert [item["token"] for _, item in arrivals] == [f"t{i}" for i in range(5)]
    # streamed, not buffered: the first chunk came well before the last
    assert arrivals[-1][0] - arrivals[0][0] > 0.8


def test_sagemaker_style_module(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "sagemaker_style")).start()
    response = post(server, {"values": [1, 2, 3]})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"predictions": [3, 6, 9]}


def _local_package(root: Path) -> Path:
    package = root / "serve_test_requirement_pkg"
    (package / "serve_test_requirement").mkdir(parents=True)
    (package / "serve_test_requirement" / "__init__.py").write_text("ANSWER = 42\n")
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "serve-test-requirement"\nversion = "1.0"\n')
    return package


def test_requirements_txt_is_installed_before_the_worker_starts(tmp_path, serve_factory):
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q",
                    "serve-test-requirement"], capture_output=True)
    package = _local_package(tmp_path)
    directory = handler_dir(tmp_path, "uses_requirement",
                            extra={"requirements.txt": f"{package}\n"})
    try:
        server = serve_factory(directory).start(timeout=240)
        assert post(server, {}).json() == {"answer": 42}
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q",
                        "serve-test-requirement"], capture_output=True)


def test_requirements_install_can_be_turned_off(tmp_path):
    from conftest import error_line, run_serve_to_exit

    package = _local_package(tmp_path)
    directory = handler_dir(tmp_path, "uses_requirement",
                            "install_requirements=false\n", extra={"requirements.txt": f"{package}\n"})
    code, _, stderr = run_serve_to_exit(directory)
    assert code != 0
    assert "serve_test_requirement" in error_line(stderr)


def test_model_fn_module_named_by_entry_point(tmp_path, serve_factory):
    code = (Path(__file__).parent / "handlers" / "sagemaker_style.py").read_text()
    directory = tmp_path / "entry"
    directory.mkdir()
    (directory / "inference.py").write_text(code)
    (directory / "serving.properties").write_text("option.entryPoint=inference.py\n")
    server = serve_factory(directory).start()
    assert post(server, {"values": [2]}).json() == {"predictions": [6]}


def test_handler_function_named_by_option(tmp_path, serve_factory):
    directory = write_model(tmp_path / "named",
                            "from djl_python import Output\n"
                            "def predict(inputs):\n"
                            "    if inputs.is_empty():\n        return None\n"
                            "    return Output().add_as_json({'named': True})\n",
                            "option.handler=predict\n")
    server = serve_factory(directory).start()
    assert post(server, {}).json() == {"named": True}
