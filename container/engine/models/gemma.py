"""Gemma 2 and Gemma 3 (text): the shared attention and GeGLU MLP in a "sandwich" layer.

What sets Gemma apart, each an input rather than a branch: embeddings scaled by sqrt(hidden);
(1 + w) RMSNorms (the one added at load); a norm after attention and after the MLP as well as
before each; scores scaled by query_pre_attn_scalar; sliding and global layers alternating
(layer_types); soft-capped attention scores and logits (Gemma 2); q/k norms and a separate
rotary base for sliding layers (Gemma 3; ModelConfig.local_rope_theta).
"""

from __future__ import annotations

from torch import nn

from ..layers.decoder import GatedMLP, PagedSelfAttention
from ..layers.norm import RMSNorm
from ..model_config import ModelConfig
from ..parallel import TensorParallel
from .llama import DecoderModel, LlamaForCausalLM


def _reduced(norm: RMSNorm, x, partial: bool):
    """norm(x) of a value that may be this rank's partial sum."""
    out = norm(x, partial=partial)
    return out[0] if partial and norm.tp.enabled else out


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: PagedSelfAttention, tp: TensorParallel):
        super().__init__()
        self.self_attn = attention
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, tp, config.hidden_act)
        eps, size = config.rms_norm_eps, config.hidden_size
        self.input_layernorm = RMSNorm(size, eps, tp, unit_offset=True)
        self.post_attention_layernorm = RMSNorm(size, eps, tp, unit_offset=True)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, tp, unit_offset=True)
        self.post_feedforward_layernorm = RMSNorm(size, eps, tp, unit_offset=True)

    def forward(self, positions, hidden, residual, kv_cache, meta, partial_input: bool):
        """As PreNormDecoderLayer; the output is never partial (its norm reduced it) and its
        residual add is left to the next layer's input norm."""
        if residual is None and not partial_input:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual, partial=partial_input)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden = _reduced(self.post_attention_layernorm, hidden, self.self_attn.partial_output)
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        hidden = self.mlp(hidden)
        hidden = _reduced(self.post_feedforward_layernorm, hidden, self.mlp.partial_output)
        return hidden, residual, False


class GemmaForCausalLM(LlamaForCausalLM):
    def build_model(self, config: ModelConfig, max_positions: int, tp: TensorParallel):
        return DecoderModel(config, max_positions, tp, self.build_layer,
                            embed_scale=config.hidden_size ** 0.5, unit_offset_norm=True)

    def build_layer(self, config: ModelConfig, index: int, rotary, window, tp) -> nn.Module:
        attention = PagedSelfAttention(config, rotary, tp, window, unit_offset_norms=True)
        return GemmaDecoderLayer(config, attention, tp)


CausalLM = GemmaForCausalLM
