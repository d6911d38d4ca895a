"""The run directory one `serve` shares with its workers and front end: socket, status, config.

Everything that would otherwise be a fixed name (socket path, ports) lives here, so several
servers can run on one host.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATES = ("starting", "loading", "ready", "restarting", "failed", "stopping")


@dataclass
class WorkerStatus:
    state: str = "starting"
    generation: int = 0
    message: str = ""
    restarts: int = 0
    load_seconds: float = 0.0                     # the last load of the worker group
    model: dict = field(default_factory=dict)     # published by rank 0 once loaded
    updated: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls) -> "RunDir":
        return cls(tempfile.mkdtemp(prefix="serve-"))

    @property
    def ipc_address(self) -> str:
        return f"ipc://{self.path / 'engine.sock'}"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    def ready_path(self, generation: int) -> Path:
        return self.path / f"ready-{generation}.json"

    def error_path(self, generation: int) -> Path:
        return self.path / f"error-{generation}.txt"

    def write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def write_status(self, status: WorkerStatus) -> None:
        status.updated = time.time()
        self.write_atomic(self.status_path, json.dumps(asdict(status)))

    def read_status(self) -> WorkerStatus:
        try:
            return WorkerStatus(**json.loads(self.status_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return WorkerStatus(state="starting", message="server is starting")


class StatusCache:
    """Re-reads status.json only when it changed (one stat per call)."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self._stamp: tuple | None = None
        self._status = WorkerStatus(state="starting", message="server is starting")

    def get(self) -> WorkerStatus:
        try:
            info = self.run_dir.status_path.stat()
        except OSError:
            return self._status
        stamp = (info.st_mtime_ns, info.st_ino)
        if stamp != self._stamp:
            self._status = self.run_dir.read_status()
            self._stamp = stamp
        return self._status
