"""Options of TensorRT-LLM (engine=MPI with option.rolling_batch=trtllm).

Names and defaults follow LMI's TensorRT-LLM configuration where LMI has one. The sizes
(max_input_len, max_output_len, max_num_tokens, max_rolling_batch_size) are compiled into the
engine by just-in-time builds; a directory of prebuilt engines keeps the limits it was built
with. container/engines/trtllm_args.py turns these options into TensorRT-LLM's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import options_native  # noqa: F401  (registers the shared keys used below first)
from . import values
from .engine_options import EngineOptions, OptionError, existing, option

TRTLLM_QUANTIZE = ("awq", "smoothquant", "fp8")
AWQ_BLOCK_SIZES = (64, 128)


@dataclass
class TrtLlmOptions(EngineOptions):
    rolling_batch: str = existing("rolling_batch")
    dtype: str = existing("dtype")
    quantize: str | None = existing("quantize")
    trust_remote_code: bool = existing("trust_remote_code")
    revision: str | None = existing("revision")
    max_rolling_batch_size: int = existing("max_rolling_batch_size")

    max_input_len: int = option(
        "max_input_len", "1024",
        "TensorRT-LLM: longest prompt in tokens, compiled into the engine (LMI's default). "
        "Longer prompts are refused.", values.integer(1), scope="trtllm")
    max_output_len: int = option(
        "max_output_len", "512",
        "TensorRT-LLM: most new tokens per request, compiled into the engine (LMI's default). "
        "The engine's max_seq_len is max_input_len + max_output_len (as in LMI 0.25; later LMI "
        "versions pass max_output_len on as max_seq_len).",
        values.integer(1), scope="trtllm")
    max_num_tokens: int | None = option(
        "max_num_tokens", None,
        "TensorRT-LLM: tokens one engine step may process (prompt tokens plus one per decoding "
        "sequence), compiled into the engine. Unset: LMI's 16384, capped at what "
        "max_rolling_batch_size sequences of max_input_len + max_output_len can hold and raised "
        "to at least max_input_len. Set: at least max_input_len and max_rolling_batch_size.",
        values.integer(1), scope="trtllm")
    use_custom_all_reduce: bool = option(
        "use_custom_all_reduce", "false",
        "TensorRT-LLM: accepted for LMI 0.25 configurations. TensorRT-LLM 0.12 and later choose "
        "their custom all-reduce kernel (NVLink) or NCCL by themselves and have no switch for "
        "it, so this key changes nothing; serve logs that.", values.boolean, scope="trtllm")
    kv_cache_free_gpu_mem_fraction: float = option(
        "kv_cache_free_gpu_mem_fraction", "0.95",
        "TensorRT-LLM: fraction of the GPU memory left free after loading the engine that the "
        "KV cache takes (LMI's default).", values.number(0, 1, exclusive_minimum=True),
        scope="trtllm")
    enable_kv_cache_reuse: bool = option(
        "enable_kv_cache_reuse", "false",
        "TensorRT-LLM: reuse the KV cache of prompt prefixes seen before (LMI's default: off).",
        values.boolean, scope="trtllm")
    batch_scheduler_policy: str = option(
        "batch_scheduler_policy", "max_utilization",
        "TensorRT-LLM: max_utilization packs as many requests as fit each step and may pause "
        "some when the KV cache fills; guaranteed_no_evict starts a request only when its whole "
        "generation fits (LMI's default: max_utilization).",
        values.choice("max_utilization", "guaranteed_no_evict"), scope="trtllm")
    smoothquant_alpha: float = option(
        "smoothquant_alpha", "0.8",
        "TensorRT-LLM, option.quantize=smoothquant: migration strength alpha from activations to "
        "weights (LMI's default).", values.number(0, 1), scope="trtllm")
    smoothquant_per_token: bool = option(
        "smoothquant_per_token", "false",
        "TensorRT-LLM, option.quantize=smoothquant: one activation scale per token instead of "
        "per tensor (slower, more accurate).", values.boolean, scope="trtllm")
    smoothquant_per_channel: bool = option(
        "smoothquant_per_channel", "false",
        "TensorRT-LLM, option.quantize=smoothquant: one weight scale per output channel instead "
        "of per tensor (slower, more accurate).", values.boolean, scope="trtllm")
    awq_block_size: int = option(
        "awq_block_size", "128",
        "TensorRT-LLM, option.quantize=awq: weights per quantization group: 64 or 128.",
        values.integer(1), scope="trtllm")
    calib_size: int = option(
        "calib_size", "512",
        "TensorRT-LLM, option.quantize=awq, smoothquant or fp8: calibration samples (LMI's "
        "default).", values.integer(1), scope="trtllm")
    calib_batch_size: int = option(
        "calib_batch_size", "32",
        "TensorRT-LLM: calibration samples per batch (LMI's default).", values.integer(1),
        scope="trtllm")
    calib_dataset: str | None = option(
        "calib_dataset", None,
        "TensorRT-LLM: calibration data set, a Hugging Face dataset name or a local path. Unset: "
        "TensorRT-LLM's default (cnn_dailymail, downloaded from the Hub: set a local copy where "
        "the endpoint has no internet).", values.non_empty_text, scope="trtllm")
    engine_cache_dir: str | None = option(
        "engine_cache_dir", None,
        "TensorRT-LLM: where engines compiled from a Hugging Face checkpoint are kept, keyed by "
        "model, options, TensorRT-LLM version and GPU, so a restart reuses them. Unset: "
        "~/.cache/serve/engines/trtllm.",
        values.non_empty_text, scope="trtllm")

    def check(self) -> None:
        if self.rolling_batch not in ("trtllm", "auto"):
            raise OptionError(
                "rolling_batch", self.rolling_batch,
                "TensorRT-LLM always batches requests in flight and has no other mode: set "
                "option.rolling_batch=trtllm, or drop engine=MPI's TensorRT-LLM keys and use the "
                "native engine (option.rolling_batch=auto) or a model.py handler")
        self.check_quantize(TRTLLM_QUANTIZE, "TensorRT-LLM")
        if self.quantize and self.dtype == "fp32":
            raise OptionError("quantize", self.quantize,
                              "quantized TensorRT-LLM engines compute in fp16 or bf16: set "
                              "option.dtype=fp16, bf16 or auto")
        if self.awq_block_size not in AWQ_BLOCK_SIZES:
            raise OptionError("awq_block_size", str(self.awq_block_size),
                              "allowed: " + ", ".join(map(str, AWQ_BLOCK_SIZES)))
        self._check_sizes()

    def _check_sizes(self) -> None:
        tokens = self.max_num_tokens
        if tokens is None:
            return
        if tokens < self.max_input_len:
            # The engine prefills a prompt in one step: a longer prompt could never run.
            raise OptionError(
                "max_num_tokens", str(tokens),
                f"smaller than option.max_input_len={self.max_input_len}, and a prompt is "
                "processed in one step: raise max_num_tokens or lower max_input_len")
        if tokens < self.max_rolling_batch_size:
            # Each running sequence decodes one token per step.
            raise OptionError(
                "max_num_tokens", str(tokens),
                f"smaller than option.max_rolling_batch_size={self.max_rolling_batch_size}, so a "
                "full batch could never decode in one step: raise max_num_tokens or lower "
                "max_rolling_batch_size")
        most = self.max_rolling_batch_size * (self.max_input_len + self.max_output_len)
        if tokens > most:
            # The engine sizes its workspace for max_num_tokens; tokens no batch can hold waste it.
            raise OptionError(
                "max_num_tokens", str(tokens),
                f"more than max_rolling_batch_size x (max_input_len + max_output_len) = {most}, "
                "the most tokens a step can ever hold: lower it, or unset it for the default")
