"""The models one `serve` holds (DJL's management API), shared by serve and its front end.

serve writes `models.json` in its run directory: every model's name, url and run directory
(the default model's is the run directory itself; each registered model has its own under
`models/<name>/`, with its own worker group, socket and status). The front end asks serve to
register, unregister or scale a model by writing a request file under `control/`; serve acts
on it in its loop and writes the answer beside it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .rundir import RunDir

MODELS_FILE = "models.json"
CONTROL_DIR = "control"


@dataclass
class ModelEntry:
    name: str
    url: str
    run_dir: str
    default: bool = False
    min_workers: int = 1
    max_workers: int = 1


def write_models(run: RunDir, models: list[ModelEntry]) -> None:
    run.write_atomic(run.path / MODELS_FILE, json.dumps([asdict(m) for m in models]))


def read_models(run: RunDir) -> list[ModelEntry]:
    try:
        raw = json.loads((run.path / MODELS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [ModelEntry(**item) for item in raw]


class ModelsCache:
    """models.json, re-read only when it changed (one stat per call)."""

    def __init__(self, run: RunDir):
        self.run = run
        self._stamp = None
        self._models: list[ModelEntry] = []

    def get(self) -> list[ModelEntry]:
        try:
            info = (self.run.path / MODELS_FILE).stat()
        except OSError:
            return self._models
        stamp = (info.st_mtime_ns, info.st_ino, info.st_size)
        if stamp != self._stamp:
            self._models = read_models(self.run)
            self._stamp = stamp
        return self._models

    def find(self, name: str) -> ModelEntry | None:
        return next((m for m in self.get() if m.name == name), None)


# control requests: front end -> serve --------------------------------------------------------
def _control(run: RunDir) -> Path:
    path = run.path / CONTROL_DIR
    path.mkdir(exist_ok=True)
    return path


def submit_control(run: RunDir, action: str, arguments: dict) -> str:
    request_id = uuid.uuid4().hex
    run.write_atomic(_control(run) / f"{request_id}.request.json",
                     json.dumps({"action": action, "arguments": arguments}))
    return request_id


def poll_result(run: RunDir, request_id: str) -> dict | None:
    path = _control(run) / f"{request_id}.result.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path.unlink(missing_ok=True)
    return result


def pending_controls(run: RunDir) -> list[tuple[str, dict]]:
    """Requests not yet acted on, oldest first (serve side)."""
    found = []
    for path in sorted(_control(run).glob("*.request.json"), key=lambda p: p.stat().st_mtime):
        try:
            found.append((path.name.split(".")[0], json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
        path.unlink(missing_ok=True)
    return found


def write_result(run: RunDir, request_id: str, code: int, body: dict) -> None:
    run.write_atomic(_control(run) / f"{request_id}.result.json",
                     json.dumps({"code": code, "body": body, "time": time.time()}))


def model_run_dir(run: RunDir, name: str) -> RunDir:
    path = run.path / "models" / name
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def safe_model_name(name: str) -> bool:
    return bool(name) and len(name) <= 128 and all(c.isalnum() or c in "-_." for c in name) \
        and not name.startswith(".") and os.sep not in name
