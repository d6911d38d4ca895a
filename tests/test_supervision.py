"""Worker supervision, start-up failures and shutdown, through the real `serve` process."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import requests

from conftest import error_line, handler_dir, run_serve_to_exit, wait_for, write_model


def ping_status(server) -> int:
    try:
        return requests.get(server.url("/ping"), timeout=2).status_code
    except requests.RequestException:
        return 0


def test_sigkill_of_the_worker_during_a_request(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "faulty")).start()
    old_pid = server.worker_pid()
    result = {}

    def slow_request():
        started = time.monotonic()
        response = requests.post(server.url("/invocations"),
                                 json={"action": "sleep", "seconds": 20}, timeout=30)
        result["elapsed"] = time.monotonic() - started
        result["response"] = response

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    thread.join(timeout=15)
    assert not thread.is_alive(), "the client hung after the worker died"
    response = result["response"]
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "WorkerDied"
    assert time.monotonic() - killed_at < 5
    # /ping tells the truth while the worker restarts, then recovers
    body = requests.get(server.url("/ping"), timeout=2)
    if body.status_code == 503:
        assert body.json()["status"] == "Unhealthy"
    wait_for(lambda: ping_status(server) == 200, timeout=60)
    assert server.worker_pid() != old_pid
    ok = requests.post(server.url("/invocations"), json={"action": "ok"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["ok"] is True


def test_ping_is_unhealthy_while_loading(tmp_path, serve_factory):
    directory = write_model(tmp_path / "slowload",
                            "import time\n"
                            "from djl_python import Output\n"
                            "def handle(inputs):\n"
                            "    if inputs.is_empty():\n"
                            "        time.sleep(4)\n        return None\n"
                            "    return Output().add('ready')\n")
    server = serve_factory(directory).start(wait=False)
    # (a requests.Response is falsy for 4xx/5xx, so wrap it to wait for any answer)
    response = wait_for(lambda: [_ping_response(server)] if _ping_response(server) is not None
                        else None, timeout=30)[0]
    assert response.status_code == 503
    assert response.json()["status"] == "Unhealthy"
    assert requests.post(server.url("/invocations"), data=b"x", timeout=5).status_code == 503
    server.wait_healthy(60)
    assert requests.post(server.url("/invocations"), data=b"x", timeout=5).text == "ready"


def _ping_response(server):
    try:
        return requests.get(server.url("/ping"), timeout=2)
    except requests.RequestException:
        return None


def test_sigterm_drains_requests_in_flight_and_exits_zero(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "faulty")).start()
    result = {}

    def slow_request():
        result["response"] = requests.post(server.url("/invocations"),
                                           json={"action": "sleep", "seconds": 2}, timeout=30)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["response"].json()["slept"] == 2
    assert server.wait_exit(30) == 0


def test_missing_model_dir(tmp_path):
    code, _, stderr = run_serve_to_exit(tmp_path / "nowhere")
    line = error_line(stderr)
    assert code != 0
    assert "does not exist" in line and "--model-dir" in line


def test_invalid_property_stops_start_up(tmp_path):
    directory = write_model(tmp_path / "bad", "def handle(i):\n    return None\n",
                            "batch_size=lots\n")
    code, _, stderr = run_serve_to_exit(directory)
    assert code == 2
    assert "batch_size" in error_line(stderr) and "'lots'" in error_line(stderr)


def test_handler_that_fails_to_import(tmp_path):
    directory = write_model(tmp_path / "broken", "import module_that_does_not_exist\n")
    code, _, stderr = run_serve_to_exit(directory)
    assert code == 3
    line = error_line(stderr)
    assert "module_that_does_not_exist" in line
    assert "Traceback" not in stderr.split("serve: error:")[1]


def test_handler_that_fails_to_initialize(tmp_path):
    directory = write_model(tmp_path / "init", "def handle(inputs):\n"
                                               "    raise RuntimeError('weights are corrupt')\n")
    code, _, stderr = run_serve_to_exit(directory)
    assert code == 3
    assert "weights are corrupt" in error_line(stderr)


def test_port_in_use(tmp_path):
    directory = handler_dir(tmp_path, "echo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, stderr = run_serve_to_exit(directory, args=("--port", str(port)))
    assert code == 1
    assert f"127.0.0.1:{port}" in error_line(stderr) and "--port" in error_line(stderr)


def test_sagemaker_bind_to_port(tmp_path, serve_factory):
    from conftest import ServeProcess, free_port

    port = free_port()
    server = ServeProcess(handler_dir(tmp_path, "echo"), env={"SAGEMAKER_BIND_TO_PORT": str(port)})
    server.args = []
    server.port = port
    # run without --port: the environment decides
    import subprocess
    import sys

    from conftest import repo_env
    process = subprocess.Popen([sys.executable, "-m", "container", "--model-dir",
                                server.model_dir, "--host", "127.0.0.1"],
                               env=repo_env({"SAGEMAKER_BIND_TO_PORT": str(port)}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ping_status(server) == 200, timeout=60)
    finally:
        process.terminate()
        process.wait(30)
