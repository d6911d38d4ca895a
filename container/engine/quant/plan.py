"""What is quantized, decided once at start from the options and the checkpoint, and the
weight loading that follows from it.

- option.quantize=fp8 on an unquantized checkpoint: load it, then quantize the decoder's
  linear layers per output channel (layer.quantize_loaded).
- an FP8 checkpoint (checkpoint.read_quantization), with or without option.quantize=fp8:
  FP8 layers built first, then loaded as stored (layer.prepare_for_checkpoint).
- option.kv_cache_dtype: the cache's element type (kv_cache.py), any model.
Refused at start, one line each: other option.quantize values (options_native.py), other
checkpoint quantizations, FP8 weights for mixture-of-experts families or on the
transformers path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...errors import StartupError
from ..weights import load_weights
from .checkpoint import Fp8Checkpoint, read_quantization, skip_tensor
from .kv_cache import dtype_name, resolve_kv_dtype
from .layer import prepare_for_checkpoint, quantize_loaded

log = logging.getLogger(__name__)


@dataclass
class QuantPlan:
    quantize_at_load: bool = False
    checkpoint: Fp8Checkpoint | None = None
    kv_cache_option: str = "auto"

    @property
    def fp8_weights(self) -> bool:
        return self.quantize_at_load or self.checkpoint is not None

    def kv_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return resolve_kv_dtype(self.kv_cache_option, model_dtype)

    def describe(self, model_dtype: torch.dtype) -> dict:
        """For the start-up log and GET /models/{name}."""
        if self.checkpoint is not None:
            weights = f"fp8 ({self.checkpoint.describe()}; activations scaled per token)"
        elif self.quantize_at_load:
            weights = "fp8 (quantized at load: weights per output channel, activations per token)"
        else:
            weights = "none"
        return {"weights": weights, "kv_cache_dtype": dtype_name(self.kv_dtype(model_dtype))}


def plan_quantization(quantize: str | None, kv_cache_dtype: str | None, model_dir,
                      module: str, architecture: str) -> QuantPlan:
    """module: the family's engine/models module ("transformers" for that path)."""
    checkpoint = read_quantization(model_dir)
    plan = QuantPlan(quantize_at_load=quantize == "fp8" and checkpoint is None,
                     checkpoint=checkpoint, kv_cache_option=kv_cache_dtype or "auto")
    if plan.fp8_weights and module == "moe":
        raise StartupError(f"FP8 weights are not supported for mixture-of-experts models yet "
                           f"({architecture}): remove option.quantize=fp8 or serve an "
                           "unquantized checkpoint (option.kv_cache_dtype=fp8 works)")
    if plan.fp8_weights and module == "transformers":
        raise StartupError(f"FP8 weights need the native model code, and {architecture} runs "
                           "through transformers: remove option.quantize=fp8 or serve an "
                           "unquantized checkpoint")
    return plan


def load_with_plan(model: torch.nn.Module, weights, plan: QuantPlan | None, tp,
                   dtype: torch.dtype) -> None:
    """Load the checkpoint into our model, FP8 where the plan says."""
    if plan is None or not plan.fp8_weights:
        load_weights(model, weights)
        return
    if plan.checkpoint is not None:
        layers = prepare_for_checkpoint(model, plan.checkpoint.ignored)
        load_weights(model, weights, skip=skip_tensor)
        how = f"read from the {plan.checkpoint.method} checkpoint"
    else:
        load_weights(model, weights)
        layers = quantize_loaded(model, tp)
        how = "quantized at load per output channel"
        if torch.cuda.is_available() and next(model.parameters()).is_cuda:
            torch.cuda.empty_cache()      # the freed bf16 weights go to the KV cache
    kinds = sorted({path.rsplit(".", 1)[-1] for path in layers})
    log.info("FP8 weights: %d linear layers (%s) %s; activations scaled per token; "
             "embeddings, lm_head and norms stay %s", len(layers), ", ".join(kinds), how,
             dtype_name(dtype))
