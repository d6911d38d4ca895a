"""The Llama family (Llama 2/3/3.1, Mistral, Qwen2): one decoder, split for tensor parallelism.

Tokens of every sequence in a step are flattened into one batch dimension; attention finds each
sequence's rows through AttentionMetadata. Checkpoint names map onto our fused parameters in
`stacked_params` (q/k/v -> qkv_proj, gate/up -> gate_up_proj).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import gpu_kernels
from ..layers.attention import AttentionMetadata, TorchPagedAttention, TritonPagedAttention
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding
from ..model_config import ModelConfig
from ..parallel import SINGLE, TensorParallel


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel):
        super().__init__()
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_heads,
                                          config.num_kv_heads, bias=config.qkv_bias, tp=tp)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(config.num_heads * config.head_dim, config.hidden_size,
                                        bias=config.o_bias, tp=tp,
                                        input_piece=self.qkv_proj.q_rows)
        self.rotary = rotary
        self.torch_backend = TorchPagedAttention(config.head_dim ** -0.5)
        self.triton_backend = TritonPagedAttention(config.head_dim ** -0.5)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata):
        tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        fused = gpu_kernels(hidden)
        if fused:
            fused.rope_and_cache(q, k, v, positions, self.rotary.cos, self.rotary.sin, kv_cache,
                                 meta.slot_mapping)
            out = self.triton_backend(q, kv_cache, meta)
        else:
            q, k = self.rotary(positions, q, k)
            out = self.torch_backend(q, k, v, kv_cache, meta)
        return self.o_proj(out.reshape(tokens, q_size), reduce=not self.partial_output)

    @property
    def partial_output(self) -> bool:
        """forward returns this rank's partial sum (the next norm all-reduces it)."""
        return self.o_proj.can_defer_reduce


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, tp=tp)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, tp=tp,
                                           input_piece=self.gate_up_proj.pieces[0])

    def forward(self, x):
        gate_up = self.gate_up_proj(x)
        fused = gpu_kernels(x)
        if fused:
            activated = fused.silu_and_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            activated = torch.nn.functional.silu(gate) * up
        return self.down_proj(activated, reduce=not self.partial_output)

    @property
    def partial_output(self) -> bool:
        return self.down_proj.can_defer_reduce


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel):
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary, tp)
        self.mlp = LlamaMLP(config, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, tp)

    def forward(self, positions, hidden, residual, kv_cache, meta, partial_input: bool):
        """partial_input: `hidden` is a partial sum (tensor parallelism); returns the MLP's
        output, the residual, and whether that output is a partial sum too."""
        if residual is None and not partial_input:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual, partial=partial_input)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(
            hidden, residual, partial=self.self_attn.partial_output)
        return self.mlp(hidden), residual, self.mlp.partial_output


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int, tp: TensorParallel):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        rotary = RotaryEmbedding(config.head_dim, max_positions, config.rope_theta,
                                 config.rope_scaling)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, rotary, tp)
                                    for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, tp)
        self.tp = tp

    def forward(self, input_ids, positions, kv_caches, meta):
        # With tensor parallelism each all-reduce is left to the norm after it (one fused
        # kernel on the GPU): the embedding and the row-parallel products hand on partial sums.
        partial = self.tp.enabled
        hidden = self.embed_tokens(input_ids, reduce=not partial)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual, partial = layer(positions, hidden, residual, kv_cache, meta,
                                              partial)
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
        self.model = LlamaModel(config, max_positions, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[LlamaAttention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

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
