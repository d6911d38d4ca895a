"""serving.properties options -> the arguments of TensorRT-LLM's LLM API, as plain data.

translate() imports nothing from TensorRT-LLM, so every rule (defaults, derived sizes,
quantization recipes) is a pure function with tests; to_llm_kwargs() then builds the library's
config objects (BuildConfig, KvCacheConfig, SchedulerConfig, QuantConfig, CalibConfig) from it.
Written against the LLM API's TensorRT-engine backend (TensorRT-LLM 0.17 to 0.21; from 1.0 on
the same classes live on as tensorrt_llm._tensorrt_engine.LLM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config.options_trtllm import TrtLlmOptions

LMI_DEFAULT_MAX_NUM_TOKENS = 16384
DTYPES = {"auto": "auto", "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
SCHEDULER_POLICIES = {"max_utilization": "MAX_UTILIZATION",
                      "guaranteed_no_evict": "GUARANTEED_NO_EVICT"}
# (per_token, per_channel) -> TensorRT-LLM's SmoothQuant algorithm (QuantAlgo member name)
SMOOTHQUANT_ALGOS = {
    (False, False): "W8A8_SQ_PER_TENSOR_PLUGIN",
    (True, False): "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
    (False, True): "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
    (True, True): "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
}


@dataclass(frozen=True)
class LlmArguments:
    """Everything LLM(...) gets, as JSON-able data (enum members by name)."""
    llm: dict                       # plain keyword arguments of LLM(...)
    build: dict                     # BuildConfig(**build): compiled into the engine
    kv_cache: dict                  # KvCacheConfig(**kv_cache): runtime
    scheduler: dict                 # SchedulerConfig(capacity_scheduler_policy=<name>): runtime
    quant: dict | None = None       # QuantConfig(quant_algo=<name>, ...): compiled in
    calib: dict | None = None       # CalibConfig(**calib): how a quantized build calibrates
    notes: list[str] = field(default_factory=list)   # accepted options that change nothing

    @property
    def max_seq_len(self) -> int:
        return self.build["max_seq_len"]

    @property
    def max_input_len(self) -> int:
        return self.build["max_input_len"]

    def engine_identity(self) -> dict:
        """What a compiled engine depends on: the options' part of the engine cache key."""
        return {"tensor_parallel_size": self.llm["tensor_parallel_size"],
                "dtype": self.llm["dtype"], "build": self.build, "quant": self.quant,
                "calib": self.calib}


def default_max_num_tokens(batch: int, max_input_len: int, max_seq_len: int) -> int:
    """LMI's 16384, capped at what a full batch can hold, and never below one whole prompt
    (a prompt is prefilled in one step) or one token per running sequence."""
    return max(min(LMI_DEFAULT_MAX_NUM_TOKENS, batch * max_seq_len), max_input_len, batch)


def translate(options: TrtLlmOptions, tensor_parallel_degree: int) -> LlmArguments:
    max_seq_len = options.max_input_len + options.max_output_len
    batch = options.max_rolling_batch_size
    max_num_tokens = options.max_num_tokens or default_max_num_tokens(
        batch, options.max_input_len, max_seq_len)
    llm = {
        "tensor_parallel_size": tensor_parallel_degree,
        "dtype": DTYPES[options.dtype],
        "trust_remote_code": options.trust_remote_code,
        # The front end tokenizes and detokenizes; the engine sees token ids only.
        "skip_tokenizer_init": True,
    }
    if options.revision:
        llm["revision"] = options.revision
    build = {
        "max_input_len": options.max_input_len,
        "max_seq_len": max_seq_len,
        "max_batch_size": batch,
        "max_num_tokens": max_num_tokens,
        "max_beam_width": 1,
    }
    kv_cache = {"free_gpu_memory_fraction": options.kv_cache_free_gpu_mem_fraction,
                "enable_block_reuse": options.enable_kv_cache_reuse}
    scheduler = {"capacity_scheduler_policy": SCHEDULER_POLICIES[options.batch_scheduler_policy]}
    quant, calib = _quantization(options)
    return LlmArguments(llm, build, kv_cache, scheduler, quant, calib,
                        _notes(options, tensor_parallel_degree))


def _quantization(options: TrtLlmOptions) -> tuple[dict | None, dict | None]:
    if not options.quantize:
        return None, None
    if options.quantize == "awq":
        quant = {"quant_algo": "W4A16_AWQ", "group_size": options.awq_block_size}
    elif options.quantize == "smoothquant":
        algo = SMOOTHQUANT_ALGOS[(options.smoothquant_per_token, options.smoothquant_per_channel)]
        quant = {"quant_algo": algo, "smoothquant_val": options.smoothquant_alpha}
    elif options.quantize == "fp8":
        # FP8 weights and activations with an FP8 KV cache, as NVIDIA's FP8 recipes build them.
        quant = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    else:  # TrtLlmOptions.check refuses anything else; this guards direct callers
        raise ValueError(f"quantize={options.quantize!r} has no TensorRT-LLM recipe")
    # LMI counts calibration samples; TensorRT-LLM counts batches of calib_batch_size samples.
    calib = {"calib_batches": math.ceil(options.calib_size / options.calib_batch_size),
             "calib_batch_size": options.calib_batch_size}
    if options.calib_dataset:
        calib["calib_dataset"] = options.calib_dataset
    return quant, calib


def _notes(options: TrtLlmOptions, tensor_parallel_degree: int) -> list[str]:
    notes = []
    if options.use_custom_all_reduce:
        if tensor_parallel_degree == 1:
            notes.append("option.use_custom_all_reduce=true: one rank has no all-reduce; "
                         "the option changes nothing")
        else:
            notes.append("option.use_custom_all_reduce=true: TensorRT-LLM chooses its custom "
                         "all-reduce kernel (NVLink) or NCCL by itself; nothing to pass")
    if options.quantize and not options.calib_dataset:
        notes.append(f"option.quantize={options.quantize}: calibrating on TensorRT-LLM's default "
                     "data set (downloaded from the Hugging Face Hub); set "
                     "option.calib_dataset to a local copy where there is no internet")
    return notes


def to_llm_kwargs(args: LlmArguments, lib, prebuilt: bool) -> dict:
    """Keyword arguments of lib.LLM(model=..., **kwargs). `lib` has the llmapi classes.

    A prebuilt engine carries its build and quantization settings, so only the runtime configs
    go with it (TensorRT-LLM would ignore the others with a warning)."""
    kwargs = dict(args.llm)
    kwargs["kv_cache_config"] = lib.KvCacheConfig(**args.kv_cache)
    kwargs["scheduler_config"] = lib.SchedulerConfig(
        capacity_scheduler_policy=lib.CapacitySchedulerPolicy[
            args.scheduler["capacity_scheduler_policy"]])
    if prebuilt:
        return kwargs
    kwargs["build_config"] = lib.BuildConfig(**args.build)
    if args.quant:
        quant = dict(args.quant)
        quant["quant_algo"] = lib.QuantAlgo[quant["quant_algo"]]
        if "kv_cache_quant_algo" in quant:
            quant["kv_cache_quant_algo"] = lib.QuantAlgo[quant["kv_cache_quant_algo"]]
        kwargs["quant_config"] = lib.QuantConfig(**quant)
    if args.calib:
        kwargs["calib_config"] = lib.CalibConfig(**args.calib)
    return kwargs
