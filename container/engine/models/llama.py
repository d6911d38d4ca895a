"""The Llama family (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5): one decoder, split for tensor
parallelism. Other families (qwen3.py, moe.py) are this model with other inputs.

Tokens of every sequence in a step are flattened into one batch dimension; attention finds each
sequence's rows through AttentionMetadata. Checkpoint names map onto our fused parameters in
`stacked_params` (q/k/v -> qkv_proj, gate/up -> gate_up_proj).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.decoder import GatedMLP, PagedSelfAttention, PreNormDecoderLayer
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding
from ..model_config import ModelConfig
from ..parallel import SINGLE, TensorParallel


class DecoderModel(nn.Module):
    """Embedding, the layers `build_layer(config, index, rotary, window, tp)` makes, final norm.
    Sliding layers get their own rotary base when the config has one (Gemma 3)."""

    def __init__(self, config: ModelConfig, max_positions: int, tp: TensorParallel,
                 build_layer, embed_scale: float | None = None, unit_offset_norm: bool = False):
        super().__init__()
        # A pipeline stage builds only its layers; the embedding lives on the first stage (and
        # the last when lm_head shares it), the final norm on the last (engine/pipeline.py).
        first, end = config.layer_range or (0, config.num_layers)
        self.last_stage = end == config.num_layers
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp) \
            if first == 0 or (self.last_stage and config.tie_word_embeddings) else None
        self.embed_scale = embed_scale
        rotary = RotaryEmbedding(config.head_dim, max_positions, config.rope_theta,
                                 config.rope_scaling, config.max_position_embeddings)
        local_rotary = rotary
        if config.local_rope_theta:
            local_rotary = RotaryEmbedding(config.head_dim, max_positions,
                                           config.local_rope_theta, config.local_rope_scaling,
                                           config.max_position_embeddings)
        self.layers = nn.ModuleList(
            build_layer(config, index, local_rotary if window else rotary, window, tp)
            for index, window in enumerate(config.layer_windows) if first <= index < end)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, tp,
                            unit_offset=unit_offset_norm) if self.last_stage else None
        self.tp = tp

    def forward(self, input_ids, positions, kv_caches, meta, hidden=None):
        """hidden: the residual stream the previous pipeline stage handed on (whole, not a
        partial sum); None on the first stage. A stage before the last returns its stream."""
        # With tensor parallelism each all-reduce is left to the norm after it (one fused
        # kernel on the GPU): the embedding and the row-parallel products hand on partial sums.
        partial = self.tp.enabled and hidden is None
        if hidden is None:
            hidden = self.embed_tokens(input_ids, reduce=not partial)
            if self.embed_scale is not None:     # Gemma: sqrt(hidden), rounded to the dtype
                hidden = hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual, partial = layer(positions, hidden, residual, kv_cache, meta,
                                              partial)
        if self.norm is None:
            hidden = self.tp.all_reduce(hidden) if partial else hidden
            return hidden if residual is None else hidden + residual
        hidden, _ = self.norm(hidden, residual, partial=partial)
        return hidden


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (our parameter fragment, shard id)
    stacked_params = {
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }

    def __init__(self, config: ModelConfig, max_positions: int, tp: TensorParallel = SINGLE):
        super().__init__()
        self.config = config
        self.tp = tp
        self.model = self.build_model(config, max_positions, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp) \
            if self.model.last_stage else None
        if config.tie_word_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.model.embed_tokens.weight

    def build_model(self, config: ModelConfig, max_positions: int, tp: TensorParallel):
        return DecoderModel(config, max_positions, tp, self.build_layer)

    def build_layer(self, config: ModelConfig, index: int, rotary, window, tp) -> nn.Module:
        return PreNormDecoderLayer(config, PagedSelfAttention(config, rotary, tp, window),
                                   self.build_mlp(config, index, tp), tp)

    @staticmethod
    def build_mlp(config: ModelConfig, layer_index: int, tp: TensorParallel) -> nn.Module:
        return GatedMLP(config.hidden_size, config.intermediate_size, tp, config.hidden_act)

    @property
    def attention_layers(self) -> list[PagedSelfAttention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_softcap
        return logits if not cap else torch.tanh(logits / cap) * cap     # Gemma 2

    def map_checkpoint_name(self, name: str) -> tuple[str, object] | None:
        """Our parameter name and shard id for a checkpoint tensor; None to skip it."""
        if "rotary_emb.inv_freq" in name:
            return None
        if self.config.tie_word_embeddings and name.startswith("lm_head."):
            return None
        for fragment, (ours, shard) in self.stacked_params.items():
            if fragment in name:
                return name.replace(fragment, ours), shard
        return name, None
CausalLM = LlamaForCausalLM      # Mistral, Qwen2 share the class
