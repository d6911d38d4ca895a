"""The models serve holds besides its default one (DJL's management API).

Each registered model gets its own run directory, worker group and Supervisor, so a model that
fails to load or dies is that model's problem only: the default model and the others go on.
serve's loop calls poll(): it acts on the front end's control requests (register, unregister,
scale), advances each model's supervisor and answers a registration once its model is ready
(or failed). Fetching an s3:// url and reading the model's config run on a thread, so a long
download never stalls the loop.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .config.loader import ServingConfig, load_config
from .errors import StartupError
from .workers import model_set
from .workers.rundir import RunDir
from .workers.supervisor import Supervisor

log = logging.getLogger("container.models")

_HOST_ENV = ("SM_NUM_GPUS", "SERVING_DOWNLOAD_DIR")
_SETTINGS = {"batch_size": "SERVING_BATCH_SIZE", "max_batch_delay": "SERVING_MAX_BATCH_DELAY",
             "job_queue_size": "SERVING_JOB_QUEUE_SIZE"}


@dataclass
class ManagedModel:
    entry: model_set.ModelEntry
    config: ServingConfig
    run: RunDir
    supervisor: Supervisor
    waiting: list[str] = field(default_factory=list)   # registrations to answer once loaded


class ModelManager:
    def __init__(self, default: ServingConfig, run: RunDir):
        self.run = run
        self.default = model_set.ModelEntry(default.model_name,
                                            default.option("model_id") or default.model_dir,
                                            str(run.path), default=True)
        self.models: dict[str, ManagedModel] = {}
        self.preparing: dict[str, tuple[concurrent.futures.Future, str, dict]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="model-fetch")
        self._publish()

    # the loop ---------------------------------------------------------------------------------
    def poll(self) -> None:
        for request_id, request in model_set.pending_controls(self.run):
            self._act(request_id, request.get("action"), request.get("arguments") or {})
        for name, (future, request_id, arguments) in list(self.preparing.items()):
            if future.done():
                del self.preparing[name]
                self._start(name, request_id, arguments, future)
        for name, model in list(self.models.items()):
            try:
                model.supervisor.poll()
            except StartupError as exc:
                log.error("model %s failed: %s", name, exc)
                self._answer(model, 500, {"code": 500, "type": "ModelLoadFailed",
                                          "message": f"model {name!r} failed: {exc}"})
                self._remove(name)
                continue
            if model.waiting and model.supervisor.status.ready:
                self._answer(model, 200, {"status": f'Model "{name}" registered.'})

    def stop(self) -> None:
        for name in list(self.models):
            self._remove(name)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # actions ----------------------------------------------------------------------------------
    def _act(self, request_id: str, action: str, arguments: dict) -> None:
        try:
            if action == "register":
                self._register(request_id, arguments)
            elif action == "unregister":
                self._unregister(request_id, arguments.get("name", ""))
            elif action == "scale":
                self._scale(request_id, arguments)
            else:
                self._fail(request_id, 400, "InvalidAction", f"unknown action {action!r}")
        except Exception as exc:  # noqa: BLE001 - a bad request must never stop serve
            log.exception("management request %s failed", action)
            self._fail(request_id, 500, "InternalServerError", f"{type(exc).__name__}: {exc}")

    def _register(self, request_id: str, arguments: dict) -> None:
        url = (arguments.get("url") or "").strip()
        if not url:
            return self._fail(request_id, 400, "InvalidModel", "url is required (?url=...)")
        name = (arguments.get("model_name") or _name_from_url(url)).strip()
        if not model_set.safe_model_name(name):
            return self._fail(request_id, 400, "InvalidModel",
                              f"model_name={name!r}: letters, digits, '-', '_' and '.' only")
        if name == self.default.name or name in self.models or name in self.preparing:
            return self._fail(request_id, 409, "ModelExists",
                              f"a model named {name!r} is already registered")
        self.preparing[name] = (self._pool.submit(_prepare, url, name, arguments), request_id,
                                arguments)
        self._publish()

    def _start(self, name: str, request_id: str, arguments: dict, future) -> None:
        try:
            model_dir = future.result()
            # the process environment describes the default model (HF_MODEL_ID, OPTION_*):
            # a registered model reads only its own directory, the GPU count and its arguments
            env = {k: v for k, v in os.environ.items() if k in _HOST_ENV}
            env.update({_SETTINGS[k]: str(v) for k, v in arguments.items() if k in _SETTINGS})
            config = load_config(model_dir, env=env)
            config.model_name = name
        except StartupError as exc:
            return self._fail(request_id, 400, "InvalidModel", f"model {name!r}: {exc}")
        except Exception as exc:  # noqa: BLE001
            log.exception("preparing model %s failed", name)
            return self._fail(request_id, 500, "ModelLoadFailed", f"model {name!r}: {exc}")
        run = model_set.model_run_dir(self.run, name)
        run.write_atomic(run.config_path, config.to_json())
        supervisor = Supervisor(config, run)
        entry = model_set.ModelEntry(name, arguments.get("url", ""), str(run.path))
        model = ManagedModel(entry, config, run, supervisor, [request_id])
        self.models[name] = model
        supervisor.start()
        self._publish()
        log.info("model %s registered from %s (engine kind %s)", name, entry.url,
                 config.engine_kind)

    def _unregister(self, request_id: str, name: str) -> None:
        if name == self.default.name:
            return self._fail(request_id, 400, "DefaultModel",
                              f"{name!r} is the model serve started with (/invocations); it "
                              "stays until serve stops")
        if name not in self.models:
            return self._fail(request_id, 404, "ModelNotFound", f"no model named {name!r}")
        self._remove(name)
        model_set.write_result(self.run, request_id, 200,
                               {"status": f'Model "{name}" unregistered'})

    def _scale(self, request_id: str, arguments: dict) -> None:
        name = arguments.get("name", "")
        entry = self.default if name == self.default.name else (
            self.models[name].entry if name in self.models else None)
        if entry is None:
            return self._fail(request_id, 404, "ModelNotFound", f"no model named {name!r}")
        try:
            low = int(arguments.get("min_worker", entry.min_workers))
            high = int(arguments.get("max_worker", max(entry.max_workers, low)))
        except (TypeError, ValueError):
            return self._fail(request_id, 400, "InvalidWorkers",
                              "min_worker and max_worker must be integers")
        if not (low == 1 and high >= 1):
            return self._fail(request_id, 400, "InvalidWorkers",
                              f"min_worker={low}, max_worker={high}: each model runs one worker "
                              "group (all of its GPUs); allowed: min_worker=1, max_worker>=1. "
                              "More throughput: more instances behind the endpoint")
        entry.min_workers, entry.max_workers = low, high
        self._publish()
        model_set.write_result(self.run, request_id, 200, {
            "status": f'Model "{name}" workers: min {low}, max {high} (one worker group)'})

    # bookkeeping ------------------------------------------------------------------------------
    def _remove(self, name: str) -> None:
        model = self.models.pop(name)
        model.supervisor.stop()
        self._publish()
        shutil.rmtree(model.run.path, ignore_errors=True)

    def _answer(self, model: ManagedModel, code: int, body: dict) -> None:
        for request_id in model.waiting:
            model_set.write_result(self.run, request_id, code, body)
        model.waiting.clear()

    def _fail(self, request_id: str, code: int, type_: str, message: str) -> None:
        model_set.write_result(self.run, request_id, code,
                               {"code": code, "type": type_, "message": message})

    def _publish(self) -> None:
        model_set.write_models(self.run, [self.default] + [m.entry for m in self.models.values()])


def _name_from_url(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _prepare(url: str, name: str, arguments: dict) -> Path:
    """The model's local directory (fetched first when the url is s3://)."""
    if url.startswith("s3://"):
        from .storage.s3 import fetch_s3

        return fetch_s3(url)
    path = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser()
    if not path.is_dir():
        raise StartupError(f"url={url}: no such directory (a local model directory or an "
                           "s3:// prefix or model.tar.gz)")
    return path
