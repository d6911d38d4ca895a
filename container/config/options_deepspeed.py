"""Options of engine=DeepSpeed: the keys DJL's DeepSpeed handler reads.

Each becomes an argument of `deepspeed.init_inference` (container/engines/deepspeed_config.py
builds the call); the meaning written here is what that argument does. What cannot work in any
set-up is refused here, at start-up, with one line; what depends on the device (a GPU) or the
architecture is refused by the engine when it knows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import options_native  # noqa: F401  (registers the shared keys reused below)
from . import values
from .engine_options import EngineOptions, OptionError, existing, option

DEEPSPEED_QUANTIZE = ("dynamic_int8", "smoothquant")


@dataclass
class DeepSpeedOptions(EngineOptions):
    dtype: str = existing("dtype")
    quantize: str | None = existing("quantize")
    max_rolling_batch_size: int = existing("max_rolling_batch_size")
    max_rolling_batch_prefill_tokens: int = existing("max_rolling_batch_prefill_tokens")
    max_tokens: int = option(
        "max_tokens", "1024",
        "DeepSpeed: init_inference(max_tokens): the most tokens (prompt + generation) one "
        "request may hold; DeepSpeed sizes its kernels' workspace with it, and the engine serves "
        "max_model_len = min(this, the model's max_position_embeddings).",
        values.integer(16), scope="deepspeed")
    enable_cuda_graph: bool = option(
        "enable_cuda_graph", "false",
        "DeepSpeed: init_inference(enable_cuda_graph). DeepSpeed replays one captured graph for "
        "one input shape (it supports this for BERT-style encoders only); generation changes "
        "shapes every step, so true is refused.", values.boolean, scope="deepspeed")
    triangular_masking: bool = option(
        "triangular_masking", "true",
        "DeepSpeed: init_inference(triangular_masking): causal masking inside the injected "
        "attention kernels (kernel injection only; AutoTP keeps the model's own mask).",
        values.boolean, scope="deepspeed")
    return_tuple: bool = option(
        "return_tuple", "true",
        "DeepSpeed: init_inference(return_tuple): injected transformer layers return tuples "
        "(kernel injection only).", values.boolean, scope="deepspeed")
    training_mp_size: int = option(
        "training_mp_size", "1",
        "DeepSpeed: init_inference(training_mp_size): the tensor-parallel degree "
        "option.checkpoint was saved with, so DeepSpeed can merge or split its shards.",
        values.integer(1), scope="deepspeed")
    checkpoint: str | None = option(
        "checkpoint", None,
        "DeepSpeed: a DeepSpeed checkpoint description (JSON with type, checkpoints, version), "
        "relative to the model directory. The model is built without weights and "
        "init_inference(checkpoint, base_dir=model directory) loads them, each rank its slice.",
        values.non_empty_text, scope="deepspeed")
    save_mp_checkpoint_path: str | None = option(
        "save_mp_checkpoint_path", None,
        "DeepSpeed: init_inference(save_mp_checkpoint_path): after loading, write DeepSpeed's "
        "tensor-parallel shards and ds_inference_config.json here (for option.checkpoint next "
        "time). Kernel injection only: AutoTP cannot load that format back.",
        values.non_empty_text, scope="deepspeed")
    deepspeed_config_path: str | None = option(
        "deepspeed_config_path", None,
        "DeepSpeed: a JSON file of init_inference arguments used instead of the ones built from "
        "these options (as DJL does; relative paths are in the model directory). Its "
        "tensor_parallel.tp_size, if set, must equal option.tensor_parallel_degree.",
        values.non_empty_text, scope="deepspeed")

    def check(self) -> None:
        self.check_quantize(DEEPSPEED_QUANTIZE, "engine=DeepSpeed")
        if self.quantize == "smoothquant":
            raise OptionError(
                "quantize", self.quantize,
                "SmoothQuant came from DJL's own DeepSpeed fork; released deepspeed has no "
                "SmoothQuant: use option.quantize=dynamic_int8 (GPU, kernel injection) or remove it")
        if self.dtype == "fp32" and self.quantize:
            raise OptionError("quantize", self.quantize, "needs option.dtype=fp16 or bf16")
        if self.enable_cuda_graph:
            raise OptionError(
                "enable_cuda_graph", "true",
                "DeepSpeed replays a CUDA graph for one fixed input shape (BERT-style encoders); "
                "text generation changes shapes every step: remove it")
