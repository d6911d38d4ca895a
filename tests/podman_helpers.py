"""Running an image of ours with podman, and the checks every image must pass.

Shared by tests/test_container_image.py (the CPU image, built by the test) and
tests/test_cuda_image.py (the CUDA image, built by `make docker-build`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import free_port, handler_dir

# The flags DESIGN.md §5 found necessary here: runc (crun fails), raised ulimits, host network.
PODMAN_RUN = ["--runtime", "runc", "--ulimit", "nofile=20000:20000",
              "--ulimit", "nproc=32768:32768", "--network", "host"]


def podman_problem() -> str | None:
    """Why podman cannot run here (None when it can)."""
    if shutil.which("podman") is None:
        return ("podman is not installed: `make docker-deps` installs it from Debian's "
                "packages (needs root)")
    info = subprocess.run(["podman", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["?"])[-1]
        return f"podman cannot run here: {last}"
    return None


def podman_exec(image: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`podman run --rm IMAGE COMMAND...` (the entrypoint runs anything but `serve` as given)."""
    return subprocess.run(["podman", "run", "--rm", *PODMAN_RUN, image, *command],
                          capture_output=True, text=True, timeout=timeout)


class Container:
    """One `podman run -d IMAGE serve`, on a free host port, removed at the end."""

    def __init__(self, image: str, model_dir: Path | None = None, env: dict | None = None,
                 init: bool = False):
        self.name = f"serve-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        # One OpenMP thread: this test shares a small CI host (oversubscribed threads spin).
        args = ["podman", "run", "-d", "--name", self.name, *PODMAN_RUN,
                "-e", f"SAGEMAKER_BIND_TO_PORT={self.port}", "-e", "OMP_NUM_THREADS=1"]
        if init:
            args.append("--init")
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        if model_dir is not None:
            args += ["-v", f"{model_dir}:/opt/ml/model:ro"]
        self.started = time.monotonic()
        subprocess.run(args + [image, "serve"], check=True, capture_output=True, text=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        result = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = subprocess.run(["podman", "inspect", "-f", "{{.State.Running}}", self.name],
                               capture_output=True, text=True)
        return state.stdout.strip() == "true"

    def wait_healthy(self, timeout: float = 180) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"the container exited:\n{self.logs()}")
            try:
                if requests.get(self.url("/ping"), timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not healthy after {timeout}s:\n{self.logs()}")

    def signal(self, name: str) -> None:
        subprocess.run(["podman", "kill", "--signal", name, self.name], check=True,
                       capture_output=True)

    def wait_exit(self, timeout: float = 60) -> int:
        result = subprocess.run(["podman", "wait", self.name], capture_output=True, text=True,
                                timeout=timeout)
        return int(result.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "5", self.name], capture_output=True)


@pytest.fixture
def containers():
    """containers(image, ...) starts a Container; all are removed at the end of the test."""
    started: list[Container] = []

    def run(*args, **kwargs) -> Container:
        container = Container(*args, **kwargs)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


def check_sigterm_drains(containers, image: str, tmp_path: Path, init: bool) -> None:
    """A stream in flight when SIGTERM arrives finishes in full, then serve exits 0."""
    container = containers(image, handler_dir(tmp_path, "streaming"), init=init)
    container.wait_healthy()
    lines: list[str] = []
    first_line = threading.Event()

    def consume():
        with requests.post(container.url("/invocations"), json={"count": 8, "delay": 0.4},
                           stream=True, timeout=60) as response:
            for line in response.iter_lines():
                lines.append(line.decode())
                first_line.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_line.wait(30), container.logs()
    signalled = time.monotonic()
    container.signal("TERM")
    code = container.wait_exit(timeout=60)
    reader.join(10)
    print(f"\n[container test] {image} {'--init' if init else 'tini'}: exit {code} "
          f"{time.monotonic() - signalled:.1f}s after SIGTERM")
    assert [json.loads(line)["token"] for line in lines] == [f"t{i}" for i in range(8)], \
        container.logs()
    assert code == 0, container.logs()
    assert "draining" in container.logs()


def check_embedded_model_answers(containers, image: str) -> Container:
    """Nothing mounted: the embedded SmolLM2 is served and answers a chat request."""
    container = containers(image)
    ready = container.wait_healthy(timeout=300)
    print(f"\n[container test] {image}: embedded SmolLM2 healthy in {ready:.1f}s")
    assert "serving the embedded model" in container.logs()
    assert requests.get(container.url("/ping"), timeout=5).json() == {"status": "Healthy"}
    answer = requests.post(container.url("/invocations"), timeout=120, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 30}).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]
    return container
