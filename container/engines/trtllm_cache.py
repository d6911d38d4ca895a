"""Compiled TensorRT-LLM engines: recognising a directory of them, and the build cache.

A directory of engines (what `trtllm-build` or LLM.save() writes) has a config.json holding
`pretrained_config` and `build_config`, and one rank<N>.engine file per tensor-parallel rank;
a Hugging Face checkpoint's config.json has no build_config. Engines compiled just in time are
kept in EngineCache under a key of the checkpoint's files, the options that shape the engine,
the TensorRT-LLM version and the GPU, so a restart loads them instead of compiling again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

ENGINE_CONFIG = "config.json"
MARKER = "serve-engine.json"           # written last: an entry without it is incomplete
# Files whose change means a different model (serving.properties, model.py ... do not count).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CHECKPOINT_JSON = ("config.json", "generation_config.json", "quantize_config.json",
                   "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class EngineDir:
    path: Path
    config: dict
    engine_files: tuple[Path, ...]

    @property
    def build_config(self) -> dict:
        return self.config.get("build_config") or {}

    @property
    def pretrained_config(self) -> dict:
        return self.config.get("pretrained_config") or {}

    @property
    def tp_size(self) -> int:
        mapping = self.pretrained_config.get("mapping") or {}
        return int(mapping.get("tp_size") or mapping.get("world_size") or 1)

    @property
    def world_size(self) -> int:
        mapping = self.pretrained_config.get("mapping") or {}
        return int(mapping.get("world_size") or self.tp_size)

    def problem(self, tensor_parallel_degree: int) -> str | None:
        """Why this directory cannot be served with that many ranks (None: it can)."""
        expected = {f"rank{r}.engine" for r in range(self.world_size)}
        missing = sorted(expected - {f.name for f in self.engine_files})
        if missing:
            return (f"the engine directory {self.path} lacks {', '.join(missing)}: copy every "
                    "rank's engine file")
        if self.world_size != tensor_parallel_degree:
            return (f"the engines in {self.path} were built for {self.world_size} rank(s) "
                    f"(tp_size={self.tp_size}) but option.tensor_parallel_degree is "
                    f"{tensor_parallel_degree}: set option.tensor_parallel_degree="
                    f"{self.world_size} or rebuild the engines")
        return None


def find_engine_dir(path: Path) -> EngineDir | None:
    """The engine directory at `path`, or None when it holds something else (a checkpoint)."""
    config_file = path / ENGINE_CONFIG
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict) or "build_config" not in config:
        return None
    files = tuple(sorted(path.glob("rank*.engine")))
    return EngineDir(path, config, files)


def checkpoint_fingerprint(model_dir: Path) -> dict:
    """The checkpoint's identity, cheaply: each weight file's name, size and modification time
    (a re-downloaded or changed file gets a new time) and the config's content."""
    files = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.suffix in CHECKPOINT_SUFFIXES or path.name in CHECKPOINT_JSON):
            stat = path.stat()
            files.append([path.name, stat.st_size, stat.st_mtime_ns])
    config = model_dir / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {"files": files, "config_sha256": digest}


def cache_key(checkpoint: dict, engine: dict, runtime: dict) -> str:
    blob = json.dumps({"checkpoint": checkpoint, "engine": engine, "runtime": runtime},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def default_cache_root() -> Path:
    return Path.home() / ".cache" / "serve" / "engines" / "trtllm"


class EngineCache:
    """<root>/<key>/ holds one compiled engine directory, complete once MARKER is in it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> EngineDir | None:
        path = self.entry(key)
        if not (path / MARKER).is_file():
            return None
        found = find_engine_dir(path)
        return found if found is not None and found.problem(found.world_size) is None else None

    @contextmanager
    def lock(self, key: str):
        """Held while one process looks up and builds a key: two servers never compile the
        same engine at once, and the second finds the first one's entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{key}.lock")):
            yield

    def store(self, key: str, save: Callable[[Path], None], description: dict) -> EngineDir:
        """Let `save(dir)` write the engines into a fresh directory, then publish it whole."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            save(partial)
            found = find_engine_dir(partial)
            problem = "no engine config.json" if found is None else found.problem(found.world_size)
            if problem:
                raise OSError(f"saving the compiled engines wrote an incomplete directory: {problem}")
            (partial / MARKER).write_text(json.dumps(
                dict(description, key=key, created=time.time()), indent=1, default=str))
            target = self.entry(key)
            shutil.rmtree(target, ignore_errors=True)     # a stale, incomplete entry
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return self.lookup(key)
