"""The models this front end can route to: the default one and those registered at run time.

`models.json` (written by serve) names each model's run directory; each has its own config,
status and worker socket. Requests pick a model by `/predictions/{name}`, by SageMaker's
`X-Amzn-SageMaker-Target-Model` header (multi-model endpoints: `name` or `name.tar.gz`), or
get the default one (/invocations).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import request

from ..config.loader import ServingConfig
from ..errors import ServingError
from ..workers.model_set import ModelEntry, ModelsCache
from ..workers.rundir import RunDir
from .engine_client import EngineClient, get_client, get_model_client

TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"


@dataclass
class ServedModel:
    entry: ModelEntry
    config: ServingConfig
    run: RunDir

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def client(self) -> EngineClient:
        return get_client(self.run) if self.entry.default else get_model_client(self.run)

    def kind(self) -> str:
        return self.client.model_info().get("kind", "handler")


class ModelRouter:
    def __init__(self, run: RunDir, default_config: ServingConfig):
        self.run = run
        self.cache = ModelsCache(run)
        self.default = ServedModel(ModelEntry(default_config.model_name,
                                              default_config.option("model_id")
                                              or default_config.model_dir, str(run.path),
                                              default=True), default_config, run)
        self._configs: dict[str, ServedModel] = {}

    def entries(self) -> list[ModelEntry]:
        return self.cache.get() or [self.default.entry]

    def find(self, name: str) -> ServedModel | None:
        if name == self.default.name:
            entry = self.cache.find(name)
            if entry is not None:
                self.default.entry = entry        # min/max workers as last set
            return self.default
        entry = self.cache.find(name)
        if entry is None:
            return None
        served = self._configs.get(entry.run_dir)
        if served is None:
            run = RunDir(entry.run_dir)
            config = ServingConfig.from_json(run.config_path.read_text(encoding="utf-8"))
            served = self._configs[entry.run_dir] = ServedModel(entry, config, run)
        served.entry = entry
        return served

    def get(self, name: str) -> ServedModel:
        served = self.find(name)
        if served is None:
            names = ", ".join(repr(e.name) for e in self.entries())
            raise ServingError(404, "ModelNotFound",
                               f"model {name!r} is not served here; this server serves {names}")
        return served

    def for_request(self) -> ServedModel:
        """/invocations: SageMaker's target model when the header names one, else the default."""
        target = (request.headers.get(TARGET_MODEL_HEADER) or "").strip()
        if not target:
            return self.default
        for suffix in (".tar.gz", ".tgz"):
            if target.endswith(suffix):
                target = target[: -len(suffix)]
        return self.get(target.rsplit("/", 1)[-1])
