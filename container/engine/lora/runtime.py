"""What a model runner holds for LoRA: the wrapped layers, the step's context and the slots.

Every rank builds one; rank 0 adds the registry (registry.py) on top of its slots.
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers.lora import BASE
from .attach import attach_lora
from .slots import LoRASlots

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class LoRARuntime:
    def __init__(self, model, model_config, options, model_dtype: torch.dtype):
        dtype = _DTYPES.get(options.lora_dtype, model_dtype)
        self.context, self.layers = attach_lora(model, set(options.lora_target_modules),
                                                options.max_loras, options.max_lora_rank, dtype)
        if not self.layers:
            raise ValueError(f"option.enable_lora: {model_config.architecture} has none of "
                             f"option.lora_target_modules ({', '.join(options.lora_target_modules)})"
                             " as a layer LoRA can wrap")
        self.slots = LoRASlots(model, self.layers, options.max_loras, options.max_cpu_loras,
                               options.max_lora_rank, dtype, model_config.architecture)

    def begin_step(self, seq_slots: np.ndarray, query_lens: np.ndarray,
                   device: torch.device) -> None:
        """The plan's slot per sequence -> a slot per token row, seen by every LoRA layer."""
        if seq_slots.size == 0 or (seq_slots == BASE).all():
            self.context.clear()                    # a base-only step: no LoRA work at all
            return
        rows = np.repeat(seq_slots, query_lens)
        self.context.set(torch.from_numpy(rows), device)
