"""engine=MPI with option.rolling_batch=trtllm: TensorRT-LLM inside the worker group.

Rank 0 resolves the model and picks where the engines come from: a directory of prebuilt
engines (ahead of time), the engine cache, or a just-in-time build from the Hugging Face
checkpoint that is then cached. It starts TensorRT-LLM's LLM over all ranks and serves the
front end through the shared ServingLoop. Ranks 1..N-1 serve TensorRT-LLM's MPI worker pool,
which rank 0's LLM drives (the launcher runs one process per rank under mpirun).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..config.loader import ServingConfig
from ..config.options_trtllm import TrtLlmOptions
from ..engine.serving_loop import ServingLoop
from ..errors import StartupError
from ..storage.resolve import resolve_model_dir
from ..workers.dist_env import DistEnv
from ..workers.ipc_server import IpcServer
from .trtllm_args import to_llm_kwargs, translate
from .trtllm_cache import (EngineCache, EngineDir, cache_key, checkpoint_fingerprint,
                           default_cache_root, find_engine_dir)
from .trtllm_engine import TrtLlmEngine
from .trtllm_model import ModelFacts, checkpoint_facts, engine_facts
from .trtllm_runtime import Runtime, device_signature, load_runtime

log = logging.getLogger(__name__)


class TrtLlmService:
    def __init__(self, config: ServingConfig, dist: DistEnv, runtime: Runtime | None = None):
        self.config = config
        self.dist = dist
        self.options = TrtLlmOptions.from_options(config.options)
        self.runtime = runtime or load_runtime()      # first: a missing library fails at once
        if not dist.is_driver:
            return
        self.args = translate(self.options, config.tensor_parallel_degree)
        for note in self.args.notes:
            log.info("%s", note)
        started = time.monotonic()
        model_dir = resolve_model_dir(config)
        engines = find_engine_dir(model_dir)
        if engines is not None:
            self.facts, self.llm, self.engine_dir = self._start_prebuilt(engines)
            self.source = "prebuilt"
            limits = engines.build_config
            max_seq_len = int(limits.get("max_seq_len") or self.args.max_seq_len)
            max_input_len = int(limits.get("max_input_len") or max_seq_len)
        else:
            self.facts = checkpoint_facts(model_dir)
            self.llm, self.engine_dir, self.source = self._start_from_checkpoint(model_dir)
            max_seq_len, max_input_len = self.args.max_seq_len, self.args.max_input_len
        self.engine = TrtLlmEngine(self.llm, self.runtime.SamplingParams, max_seq_len,
                                   max_input_len, self.facts.vocab_size, self.facts.eos_token_ids)
        log.info("TensorRT-LLM %s ready in %.1f s (%s engines in %s, tp=%d): max_input_len %d, "
                 "max_seq_len %d", self.runtime.version, time.monotonic() - started, self.source,
                 self.engine_dir, config.tensor_parallel_degree, max_input_len, max_seq_len)

    # where the engines come from ---------------------------------------------------------------
    def _start_prebuilt(self, engines: EngineDir) -> tuple[ModelFacts, object, Path]:
        problem = engines.problem(self.config.tensor_parallel_degree)
        if problem:
            raise StartupError(problem)
        facts = engine_facts(engines)
        limits = {k: engines.build_config.get(k) for k in
                  ("max_input_len", "max_seq_len", "max_batch_size", "max_num_tokens")}
        log.info("option.model_id is a directory of prebuilt engines: their own limits apply "
                 "(%s); the build options only shape just-in-time builds",
                 ", ".join(f"{k}={v}" for k, v in limits.items()))
        return facts, self._start_llm(engines.path, prebuilt=True), engines.path

    def _start_from_checkpoint(self, model_dir: Path) -> tuple[object, Path, str]:
        cache = EngineCache(Path(self.options.engine_cache_dir).expanduser()
                            if self.options.engine_cache_dir else default_cache_root())
        runtime_part = {"tensorrt_llm": self.runtime.version, "device": device_signature()}
        key = cache_key(checkpoint_fingerprint(model_dir), self.args.engine_identity(),
                        runtime_part)
        with cache.lock(key):
            cached = cache.lookup(key)
            if cached is not None:
                log.info("reusing the engines compiled before: %s", cached.path)
                return self._start_llm(cached.path, prebuilt=True), cached.path, "cached"
            log.info("compiling TensorRT-LLM engines for %s (once; kept in %s)", model_dir,
                     cache.entry(key))
            llm = self._start_llm(model_dir, prebuilt=False)
            description = {"checkpoint": str(model_dir), **runtime_part,
                           "engine": self.args.engine_identity()}
            try:
                stored = cache.store(key, lambda path: llm.save(str(path)), description)
            except OSError as exc:       # serving goes on; the next start compiles again
                log.warning("could not keep the compiled engines in %s: %s", cache.root, exc)
                return llm, model_dir, "compiled"
            return llm, stored.path, "compiled"

    def _start_llm(self, model: Path, prebuilt: bool):
        kwargs = to_llm_kwargs(self.args, self.runtime, prebuilt=prebuilt)
        tp = self.config.tensor_parallel_degree
        if tp > 1:
            # mpirun started one process per rank: use that MPI world (ranks 1..N-1 wait in
            # follow()) instead of letting TensorRT-LLM spawn processes of its own.
            kwargs["_mpi_session"] = self.runtime.MpiCommSession(n_workers=tp)
        return self.runtime.LLM(model=str(model), **kwargs)

    # the worker-side contract (container/workers/worker_main.py) -------------------------------
    def model_info(self) -> dict:
        return {
            "kind": "llm",
            "engine": "trtllm",
            "name": self.config.model_name,
            "tokenizer_dir": str(self.facts.tokenizer_dir),
            "max_model_len": self.engine.max_model_len,
            "max_input_len": self.engine.max_input_len,
            "eos_token_ids": self.facts.eos_token_ids,
            "vocab_size": self.facts.vocab_size,
            "tensorrt_llm": self.runtime.version,
            "engine_source": self.source,
            "engine_dir": str(self.engine_dir),
        }

    def serve(self, ipc: IpcServer, ready) -> None:
        ServingLoop(self.engine, ipc).run_forever(ready)

    def follow(self) -> None:
        self.runtime.serve_worker_rank()


def build_trtllm_service(config: ServingConfig, dist: DistEnv) -> TrtLlmService:
    return TrtLlmService(config, dist)

