"""Start a `serve` for a benchmark and wait until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BenchServer:
    """`serve` on a free port (or `port`). Its output is discarded unless `output` says
    otherwise (None: this process's; or an open file): the device scripts keep it, as it is
    what explains a failed start."""

    def __init__(self, model_dir: str, env: dict | None = None, output=subprocess.DEVNULL,
                 port: int | None = None, cwd: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "container", "--model-dir", str(model_dir), "--host",
             "127.0.0.1", "--port", str(self.port)],
            env=dict(os.environ, **(env or {})), stdout=output,
            stderr=subprocess.STDOUT if output not in (None, subprocess.DEVNULL) else output,
            cwd=cwd)

    def wait(self, timeout: float = 600) -> float:
        """Seconds from start until /ping says Healthy."""
        return self._poll(lambda: requests.get(self.url + "/ping", timeout=2), timeout,
                          "become healthy")

    def wait_first_token(self, prompt: str, timeout: float = 900) -> float:
        """Seconds from start until a one-token generation of `prompt` is answered: the
        load-time figure (start-up, weights, warm-up and the first request together)."""
        return self._poll(lambda: requests.post(self.url + "/invocations", json={
            "inputs": prompt, "parameters": {"max_new_tokens": 1}}, timeout=10), timeout,
            "answer a request")

    def _poll(self, ask, timeout: float, what: str) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited with {self.process.returncode}")
            try:
                if ask().status_code == 200:
                    return time.perf_counter() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"serve did not {what} within {timeout:.0f} s")

    def stop(self, timeout: float = 120) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> "BenchServer":
        self.wait()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
