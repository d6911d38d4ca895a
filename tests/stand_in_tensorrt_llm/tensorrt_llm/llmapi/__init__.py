"""STAND-IN for tensorrt_llm.llmapi (see ../../README.md). Not TensorRT-LLM.

Same class and argument names as the LLM API's TensorRT-engine backend; unknown arguments are
refused (the real configs are strict pydantic models and dataclasses). Every call is recorded.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from .._record import jsonable, record

STEP_S = float(os.environ.get("STAND_IN_TRTLLM_STEP_S", "0.002"))
BUILD_S = float(os.environ.get("STAND_IN_TRTLLM_BUILD_S", "0"))


class CapacitySchedulerPolicy(enum.Enum):
    MAX_UTILIZATION = 0
    GUARANTEED_NO_EVICT = 1
    STATIC_BATCH = 2


class QuantAlgo(enum.Enum):
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W8A16_GPTQ = "W8A16_GPTQ"
    W4A16_GPTQ = "W4A16_GPTQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    W8A8_SQ_PER_TENSOR_PLUGIN = "W8A8_SQ_PER_TENSOR_PLUGIN"
    W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN = "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN = "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN"
    W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN = "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN"
    FP8 = "FP8"
    FP8_PER_CHANNEL_PER_TOKEN = "FP8_PER_CHANNEL_PER_TOKEN"
    INT8 = "INT8"
    NO_QUANT = "NO_QUANT"


@dataclass(kw_only=True)
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: Optional[int] = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: Optional[int] = None
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    strongly_typed: bool = True


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: Optional[int] = None
    max_attention_window: Optional[list] = None
    sink_token_length: Optional[int] = None
    free_gpu_memory_fraction: Optional[float] = None
    host_cache_size: Optional[int] = None
    onboard_blocks: bool = True


@dataclass(kw_only=True)
class SchedulerConfig:
    capacity_scheduler_policy: CapacitySchedulerPolicy = CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    context_chunking_policy: Optional[object] = None
    dynamic_batch_config: Optional[object] = None

    def __post_init__(self):
        if not isinstance(self.capacity_scheduler_policy, CapacitySchedulerPolicy):
            raise TypeError("capacity_scheduler_policy must be a CapacitySchedulerPolicy")


@dataclass(kw_only=True)
class QuantConfig:
    quant_algo: Optional[QuantAlgo] = None
    kv_cache_quant_algo: Optional[QuantAlgo] = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: Optional[list] = None
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: Optional[list] = None

    def __post_init__(self):
        for name in ("quant_algo", "kv_cache_quant_algo"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, QuantAlgo):
                raise TypeError(f"{name} must be a QuantAlgo, got {value!r}")


@dataclass(kw_only=True)
class CalibConfig:
    device: str = "cuda"
    calib_dataset: str = "cnn_dailymail"
    calib_batches: int = 512
    calib_batch_size: int = 1
    calib_max_seq_length: int = 512
    random_seed: int = 1234
    tokenizer_max_seq_length: int = 2048


@dataclass(kw_only=True)
class SamplingParams:
    end_id: Optional[int] = None
    pad_id: Optional[int] = None
    max_tokens: int = 32
    stop: Optional[object] = None
    stop_token_ids: Optional[list] = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: Optional[int] = None
    use_beam_search: bool = False
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    min_tokens: Optional[int] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[int] = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: Optional[object] = None


class MpiCommSession:
    """STAND-IN: checks what the real one checks (rank 0, world size == n_workers)."""

    def __init__(self, comm=None, n_workers: int = 1):
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
        if rank != 0:
            raise RuntimeError(f"only rank 0 can start multi-node session, got {rank}")
        if size != n_workers:
            raise ValueError(f"n_workers must be equal to the number of processes in MPI, got "
                             f"{n_workers} vs {size}")
        self.n_workers = n_workers
        record("MpiCommSession", n_workers=n_workers)

    def shutdown(self, wait=True):
        record("MpiCommSession.shutdown")


_LLM_ARGUMENTS = {
    "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
    "tensor_parallel_size", "dtype", "revision", "tokenizer_revision", "pipeline_parallel_size",
    "build_config", "kv_cache_config", "scheduler_config", "quant_config", "calib_config",
    "enable_build_cache", "enable_chunked_prefill", "max_batch_size", "max_input_len",
    "max_seq_len", "max_beam_width", "max_num_tokens", "workspace", "fast_build",
    "extended_runtime_perf_knob_config", "embedding_parallel_mode", "_mpi_session",
}
_CONFIG_TYPES = {"build_config": BuildConfig, "kv_cache_config": KvCacheConfig,
                 "scheduler_config": SchedulerConfig, "quant_config": QuantConfig,
                 "calib_config": CalibConfig, "_mpi_session": MpiCommSession}


def _engine_config(model: Path) -> Optional[dict]:
    path = model / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config if "build_config" in config else None


class LLM:
    """STAND-IN: records its arguments, 'builds' (HF checkpoint) or 'loads' (engine dir)."""

    def __init__(self, model, tokenizer=None, skip_tokenizer_init=False, trust_remote_code=False,
                 tensor_parallel_size=1, dtype="auto", revision=None, **kwargs):
        unknown = sorted(set(kwargs) - _LLM_ARGUMENTS)
        if unknown:
            raise TypeError(f"LLM got unexpected arguments: {', '.join(unknown)}")
        for name, cls in _CONFIG_TYPES.items():
            if kwargs.get(name) is not None and not isinstance(kwargs[name], cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(kwargs[name])}")
        session = kwargs.get("_mpi_session")
        world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
        if tensor_parallel_size > 1 and session is None:
            # The real LLM would spawn tensor_parallel_size MPI processes of its own here.
            raise RuntimeError("stand-in: tensor_parallel_size > 1 without _mpi_session would "
                               f"spawn new MPI workers beside the {world} mpirun started")
        self.model = Path(model)
        self.tensor_parallel_size = tensor_parallel_size
        self.skip_tokenizer_init = skip_tokenizer_init
        self.dtype = dtype
        self.quant_config = kwargs.get("quant_config")
        engine = _engine_config(self.model)
        record("LLM", model=str(model), tokenizer=tokenizer,
               skip_tokenizer_init=skip_tokenizer_init, trust_remote_code=trust_remote_code,
               tensor_parallel_size=tensor_parallel_size, dtype=dtype, revision=revision,
               kwargs={k: v for k, v in kwargs.items() if k != "_mpi_session"},
               mpi_session=None if session is None else session.n_workers)
        if engine is not None:
            mapping = engine["pretrained_config"].get("mapping", {})
            if mapping.get("world_size", 1) != tensor_parallel_size:
                raise ValueError(f"tp_size {tensor_parallel_size} is not consistent with the "
                                 f"engine's world_size {mapping.get('world_size')}")
            for rank in range(tensor_parallel_size):
                if not (self.model / f"rank{rank}.engine").is_file():
                    raise FileNotFoundError(self.model / f"rank{rank}.engine")
            self.build_config = BuildConfig(**engine["build_config"])
            self.pretrained = engine["pretrained_config"]
            record("load_engines", model=str(model))
        else:
            hf = self.model / "config.json"
            if not hf.is_file():
                raise ValueError(f"stand-in: {model} is neither an engine dir nor a checkpoint")
            self.build_config = kwargs.get("build_config") or BuildConfig()
            if self.build_config.max_seq_len is None:
                self.build_config.max_seq_len = 2048
            config = json.loads(hf.read_text())
            self.pretrained = {"architecture": (config.get("architectures") or ["?"])[0],
                               "vocab_size": config.get("vocab_size"), "dtype": dtype}
            time.sleep(BUILD_S)
            record("build", model=str(model), build_config=self.build_config,
                   quant_config=self.quant_config, calib_config=kwargs.get("calib_config"))

    def save(self, engine_dir: str) -> None:
        path = Path(engine_dir)
        path.mkdir(parents=True, exist_ok=True)
        tp = self.tensor_parallel_size
        pretrained = dict(self.pretrained, mapping={"world_size": tp, "tp_size": tp,
                                                    "pp_size": 1},
                          quantization=jsonable(self.quant_config) if self.quant_config else {})
        (path / "config.json").write_text(json.dumps({
            "version": "0.0.0+stand-in", "pretrained_config": pretrained,
            "build_config": {f.name: getattr(self.build_config, f.name)
                             for f in fields(self.build_config)}}, indent=1))
        for rank in range(tp):
            (path / f"rank{rank}.engine").write_text("STAND-IN ENGINE: not a TensorRT engine\n")
        record("save", engine_dir=str(path))

    def generate_async(self, inputs, sampling_params=None, streaming=False, **kwargs):
        if not (isinstance(inputs, list) and all(isinstance(t, int) for t in inputs)):
            raise TypeError("stand-in: give prompt token ids (the tokenizer is skipped)")
        sp = sampling_params or SamplingParams()
        if self.skip_tokenizer_init and sp.end_id is None:
            raise ValueError("end_id must be set when the tokenizer is skipped")
        if len(inputs) > self.build_config.max_input_len:
            raise ValueError(f"prompt length {len(inputs)} exceeds max_input_len "
                             f"{self.build_config.max_input_len}")
        if len(inputs) + sp.max_tokens > self.build_config.max_seq_len:
            raise ValueError("prompt + max_tokens exceeds max_seq_len")
        try:
            asyncio.get_running_loop()
            has_loop = True
        except RuntimeError:
            has_loop = False
        record("generate_async", prompt_token_ids=inputs, sampling_params=sp,
               streaming=streaming, has_loop=has_loop)
        return RequestOutput(inputs, sp, has_loop)

    def shutdown(self):
        record("shutdown")


class RequestOutput:
    """STAND-IN for a streamed result: yields itself once per new token."""

    def __init__(self, prompt, sp: SamplingParams, has_loop: bool):
        self.prompt_token_ids = prompt
        self.sampling_params = sp
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self._has_loop = has_loop
        self._aborted = False

    def abort(self):
        self._aborted = True
        record("abort", prompt_token_ids=self.prompt_token_ids)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._has_loop:   # as the real one: no loop at creation, no async queue
            raise AssertionError("The asyncio event loop was not present during "
                                 "initialization, so async operations are not available.")
        if self.finished:
            raise StopAsyncIteration
        await asyncio.sleep(STEP_S)
        out, sp = self.outputs[0], self.sampling_params
        if self._aborted:
            out.finish_reason, self.finished = "cancelled", True
            return self
        i = len(out.token_ids)
        token = self.prompt_token_ids[i % len(self.prompt_token_ids)]
        out.token_ids.append(token)
        if sp.logprobs:
            out.logprobs.append({token: Logprob(-(i + 1) / 10.0, 1)})
        if not sp.ignore_eos and token == sp.end_id:
            out.finish_reason = "stop"
        elif token in (sp.stop_token_ids or []):
            out.finish_reason, out.stop_reason = "stop", token
            if not sp.include_stop_str_in_output:
                out.token_ids.pop()
        elif len(out.token_ids) >= sp.max_tokens:
            out.finish_reason = "length"
        self.finished = out.finish_reason is not None
        return self
