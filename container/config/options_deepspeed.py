"""Options of engine=DeepSpeed (the names DJL's DeepSpeed handler reads)."""

from __future__ import annotations

from dataclasses import dataclass

from . import values
from .engine_options import EngineOptions, OptionError, existing, option

DEEPSPEED_QUANTIZE = ("dynamic_int8", "smoothquant")


@dataclass
class DeepSpeedOptions(EngineOptions):
    dtype: str = existing("dtype")
    quantize: str | None = existing("quantize")
    max_tokens: int = option("max_tokens", "1024",
                             "DeepSpeed: longest prompt + generation the inference kernels hold.",
                             values.integer(16), scope="deepspeed")
    enable_cuda_graph: bool = option("enable_cuda_graph", "false",
                                     "DeepSpeed: capture CUDA graphs (GPU, TP=1 only).",
                                     values.boolean, scope="deepspeed")
    triangular_masking: bool = option("triangular_masking", "true",
                                      "DeepSpeed: use a causal (triangular) attention mask.",
                                      values.boolean, scope="deepspeed")
    return_tuple: bool = option("return_tuple", "true",
                                "DeepSpeed: injected layers return tuples.", values.boolean,
                                scope="deepspeed")
    training_mp_size: int = option("training_mp_size", "1",
                                   "DeepSpeed: tensor-parallel degree the checkpoint was saved "
                                   "with.", values.integer(1), scope="deepspeed")
    checkpoint: str | None = option("checkpoint", None,
                                    "DeepSpeed: checkpoint description JSON to load from.",
                                    values.non_empty_text, scope="deepspeed")
    save_mp_checkpoint_path: str | None = option(
        "save_mp_checkpoint_path", None,
        "DeepSpeed: write the sharded (per-rank) checkpoint here after loading.",
        values.non_empty_text, scope="deepspeed")
    deepspeed_config_path: str | None = option(
        "deepspeed_config_path", None, "DeepSpeed: JSON config passed to init_inference.",
        values.non_empty_text, scope="deepspeed")
    max_rolling_batch_size: int = existing("max_rolling_batch_size")

    def check(self) -> None:
        if self.quantize and self.quantize not in DEEPSPEED_QUANTIZE:
            raise OptionError("quantize", self.quantize,
                              "allowed with engine=DeepSpeed: " + ", ".join(DEEPSPEED_QUANTIZE))
        if self.dtype == "fp32" and self.quantize:
            raise OptionError("quantize", self.quantize, "needs option.dtype=fp16 or bf16")
