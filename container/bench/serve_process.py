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
    def __init__(self, model_dir: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "container", "--model-dir", str(model_dir), "--host",
             "127.0.0.1", "--port", str(self.port)],
            env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def wait(self, timeout: float = 600) -> float:
        """Seconds from start until /ping says Healthy."""
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited with {self.process.returncode}")
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise SystemExit("serve did not become healthy")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> "BenchServer":
        self.wait()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
