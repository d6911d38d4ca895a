"""Mixture-of-experts families: Mixtral and Qwen3-MoE (Qwen3's attention with q/k norm).

The Llama decoder with SparseMoE blocks in place of the dense MLP (Qwen3-MoE keeps dense MLPs
on `mlp_only_layers` and off the `decoder_sparse_step` grid). Checkpoint names of both layouts
map onto the stacked expert parameters: per-expert matrices
(`block_sparse_moe.experts.3.w1`, `mlp.experts.3.gate_proj`) and transformers 5's fused ones
(`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]).
"""

from __future__ import annotations

import re

from ..layers.decoder import GatedMLP
from ..layers.moe import SparseMoE
from ..model_config import ModelConfig
from ..parallel import TensorParallel
from .llama import LlamaForCausalLM

# checkpoint expert matrix -> (our parameter, piece): Mixtral's w1/w3/w2, Qwen's names
_EXPERT_MATRIX = {"w1": ("w13", 0), "w3": ("w13", 1), "w2": ("w2", 0),
                  "gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", 0)}
_PER_EXPERT = re.compile(r"^(.*)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight$")
_FUSED = re.compile(r"^(.*)\.(?:block_sparse_moe|mlp)\.experts\.(gate_up_proj|down_proj)$")


def is_sparse_layer(moe: dict, index: int) -> bool:
    return index not in moe["dense_layers"] and (index + 1) % moe["sparse_step"] == 0


class MoECausalLM(LlamaForCausalLM):
    @staticmethod
    def build_mlp(config: ModelConfig, layer_index: int, tp: TensorParallel):
        moe = config.moe
        if not is_sparse_layer(moe, layer_index):
            return GatedMLP(config.hidden_size, config.intermediate_size, tp)
        return SparseMoE(config.hidden_size, moe["expert_intermediate_size"],
                         moe["num_experts"], moe["top_k"], moe["renormalize"], tp,
                         moe["shared_expert_intermediate_size"])

    def map_checkpoint_name(self, name: str):
        per_expert = _PER_EXPERT.match(name)
        if per_expert and per_expert.group(3) in _EXPERT_MATRIX:
            prefix, expert, matrix = per_expert.groups()
            ours, piece = _EXPERT_MATRIX[matrix]
            return f"{prefix}.mlp.{ours}", (int(expert), piece)
        fused = _FUSED.match(name)
        if fused:
            prefix, matrix = fused.groups()
            return f"{prefix}.mlp.{'w13' if matrix == 'gate_up_proj' else 'w2'}", (None, None)
        name = name.replace(".block_sparse_moe.gate.", ".mlp.gate.")
        name = name.replace(".mlp.shared_expert.", ".mlp.shared_expert.")
        return super().map_checkpoint_name(name)


CausalLM = MoECausalLM
