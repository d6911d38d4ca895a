"""Shared test fixtures: a real `serve` process on a free port, and model directories."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def repo_env(extra: dict | None = None) -> dict:
    """Environment for child processes: this checkout first on the import path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPTION_", "SERVING_", "SAGEMAKER_", "HF_MODEL", "SM_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServeProcess:
    """`python -m container --model-dir DIR --port N`, with its output captured."""

    def __init__(self, model_dir, env: dict | None = None, port: int | None = None,
                 args: tuple = ()):
        self.model_dir = str(model_dir)
        self.port = port or free_port()
        self.env = repo_env(env)
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self, wait: bool = True, timeout: float = 120) -> "ServeProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "container", "--model-dir", self.model_dir, "--host",
             "127.0.0.1", "--port", str(self.port), *self.args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=tempfile.gettempdir())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_healthy(timeout)
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def log(self) -> str:
        return "".join(self.output)

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log}")
            try:
                if requests.get(self.url("/ping"), timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve not healthy after {timeout}s:\n{self.log}")

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        if self._reader:
            self._reader.join(timeout=5)
        return code

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait_exit(10)

    def worker_pid(self) -> int:
        described = requests.get(self.url(f"/models/{self.model_name()}"), timeout=5).json()
        return described[0]["workers"][0]["pid"]

    def model_name(self) -> str:
        return requests.get(self.url("/models"), timeout=5).json()["models"][0]["modelName"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_serve_to_exit(model_dir, env: dict | None = None, timeout: float = 120,
                      args: tuple = ()) -> tuple[int, str, str]:
    """Run serve expecting it to stop by itself (a start-up failure): (code, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "container", "--model-dir", str(model_dir), "--host", "127.0.0.1",
         "--port", str(free_port()), *args], env=repo_env(env), capture_output=True, text=True,
        timeout=timeout, cwd=tempfile.gettempdir())
    return result.returncode, result.stdout, result.stderr


def wait_for(predicate, timeout=60.0, interval=0.1):
    """Poll until `predicate()` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached")


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("serve: error:")]
    assert len(lines) == 1, f"expected one 'serve: error:' line, got:\n{stderr}"
    return lines[0]


@pytest.fixture
def serve_factory():
    servers: list[ServeProcess] = []

    def make(model_dir, **kwargs) -> ServeProcess:
        server = ServeProcess(model_dir, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def write_model(directory: Path, code: str, properties: str = "", extra: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(code)
    if properties:
        (directory / "serving.properties").write_text(properties)
    for name, content in (extra or {}).items():
        (directory / name).write_text(content)
    return directory


HANDLERS = Path(__file__).resolve().parent / "handlers"


def handler_dir(tmp_path: Path, name: str, properties: str = "", extra: dict | None = None) -> Path:
    """A model dir whose model.py is tests/handlers/<name>.py."""
    return write_model(tmp_path / name, (HANDLERS / f"{name}.py").read_text(), properties, extra)


def engine_stats(server) -> dict:
    """The engine's live figures from /models/{name}. Right after a start, or on a loaded
    machine, the front-end process that answers may not hear from the worker in time and
    leaves them out: ask again (up to 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        stats = requests.get(server.url(f"/models/{server.model_name()}"), timeout=10).json()[0][
            "engineStats"]
        if "running" in stats or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)
