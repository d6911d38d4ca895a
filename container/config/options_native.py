"""Options of the native LLM engine (option.* keys)."""

from __future__ import annotations

from dataclasses import dataclass

from . import values
from .engine_options import EngineOptions, OptionError, existing, option
from .options_lora import LoRAOptions
from .options_speculative import SpeculativeOptions


NATIVE_QUANTIZE = ("fp8",)


@dataclass
class NativeOptions(SpeculativeOptions, LoRAOptions, EngineOptions):
    dtype: str = existing("dtype")
    max_rolling_batch_size: int = option(
        "max_rolling_batch_size", "256", "Most sequences in one rolling batch step.",
        values.integer(1, 8192))
    max_rolling_batch_prefill_tokens: int = option(
        "max_rolling_batch_prefill_tokens", "4096",
        "Token budget of one step (prompt chunks plus one token per decoding sequence); "
        "longer prompts are prefilled in chunks.", values.integer(16))
    max_model_len: int | None = option(
        "max_model_len", None, "Longest prompt + generation; unset: the model's "
        "max_position_embeddings.", values.integer(16))
    kv_block_size: int = option("kv_block_size", "16", "Tokens per KV-cache block.",
                                values.choice("8", "16", "32", "64", "128"))
    gpu_memory_utilization: float = option(
        "gpu_memory_utilization", "0.9",
        "GPU: fraction of the GPU's memory this engine may use (weights + activations + KV "
        "cache); the KV cache gets what is left.", values.number(0, 1, exclusive_minimum=True))
    cpu_kv_cache_gb: float = option(
        "cpu_kv_cache_gb", "1", "CPU: gigabytes of memory for the KV cache.",
        values.number(0, exclusive_minimum=True))
    num_kv_blocks: int | None = option(
        "num_kv_blocks", None, "Exact number of KV-cache blocks (overrides the two sizes above; "
        "for tests and tuning).", values.integer(1))
    enable_prefix_caching: bool = option(
        "enable_prefix_caching", "true",
        "Reuse KV blocks of identical prompt prefixes across requests.", values.boolean)
    overlap_scheduling: bool = option(
        "overlap_scheduling", "true",
        "Prepare and launch the next step while the GPU runs the current one (off: strictly "
        "one step at a time). Not used with tensor parallelism, repetition penalties or "
        "speculative decoding.",
        values.boolean)
    enforce_eager: bool = option(
        "enforce_eager", "false", "GPU: run decode steps without CUDA graphs.", values.boolean)
    load_format: str = option(
        "load_format", "auto",
        "How weights are read: auto (download remote checkpoints, then load), download, or "
        "stream (s3:// only: each rank reads its own slices straight from S3, no local copy).",
        values.choice("auto", "download", "stream"), scope="common")
    quantize: str | None = existing("quantize")
    kv_cache_dtype: str = option(
        "kv_cache_dtype", "auto",
        "KV-cache element type: auto (the model's dtype) or fp8 (alias fp8_e4m3: "
        "float8_e4m3fn with a scale of 1.0, half the bytes of bf16, so twice the KV blocks in "
        "the same memory).", values.choice("auto", "fp8", aliases={"fp8_e4m3": "fp8"}))
    pipeline_parallel_degree: int = option(
        "pipeline_parallel_degree", "1",
        "Pipeline stages the model's layers are split into (ranks = this x "
        "tensor_parallel_degree; stages may sit on different nodes).", values.integer(1, 256))
    pipeline_layer_split: str | None = option(
        "pipeline_layer_split", None,
        "Layers per pipeline stage, comma-separated (e.g. 12,12,8); unset: an even split.",
        values.non_empty_text)

    def check(self) -> None:
        self.check_lora()
        self.check_speculative()
        if self.enable_lora and self.pipeline_parallel_degree > 1:
            raise OptionError(
                "pipeline_parallel_degree", str(self.pipeline_parallel_degree),
                "LoRA adapters are served with tensor parallelism only: set "
                "option.pipeline_parallel_degree=1 or option.enable_lora=false")
        self.check_quantize(NATIVE_QUANTIZE, "the native engine")
