"""The pieces every decoder-only family shares: attention over the paged cache, a gated MLP,
and the pre-norm decoder layer that chains them with tensor-parallel partial sums.

Families differ by inputs, not by copies: a per-layer sliding window, q/k RMSNorm per head
(Qwen3), qkv bias (Qwen2) and the feed-forward block (dense MLP here, experts in moe.py) are
all given to the constructors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import gpu_kernels
from ..model_config import ModelConfig
from ..parallel import TensorParallel
from .attention import AttentionMetadata, TorchPagedAttention, TritonPagedAttention, write_kv
from .linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from .norm import RMSNorm
from .rotary import RotaryEmbedding


class PagedSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel,
                 window: int | None = None, unit_offset_norms: bool = False):
        """window: this layer sees only the last `window` positions (sliding window).
        unit_offset_norms: q/k norms scale by (1 + w) (Gemma 3)."""
        super().__init__()
        self.head_dim = config.head_dim
        self.window = window
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_heads,
                                          config.num_kv_heads, bias=config.qkv_bias, tp=tp)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(config.num_heads * config.head_dim, config.hidden_size,
                                        bias=config.o_bias, tp=tp,
                                        input_piece=self.qkv_proj.q_rows)
        if config.qk_norm:      # Qwen3: RMSNorm over each head's q and k, before rotary
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps,
                                  unit_offset=unit_offset_norms)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps,
                                  unit_offset=unit_offset_norms)
        self.rotary = rotary
        scale = config.attention_scale or config.head_dim ** -0.5
        self.torch_backend = TorchPagedAttention(scale, window, config.attention_softcap)
        self.triton_backend = TritonPagedAttention(scale, window, config.attention_softcap)

    @property
    def kind(self) -> str:
        return f"sliding({self.window})" if self.window else "full"

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata):
        tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        fused = gpu_kernels(hidden)
        if not fused and not hasattr(self, "q_norm"):
            # torch path: rotate the Q and K heads in one go, straight from the QKV output
            qk = qkv[:, :q_size + kv_size].view(tokens, self.num_heads + self.num_kv_heads,
                                                self.head_dim)
            qk = self.rotary.rotate_heads(positions, qk, meta.step_cache)
            q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
            v = qkv[:, q_size + kv_size:].view(tokens, self.num_kv_heads, self.head_dim)
            out = self.torch_backend(q, k, v, kv_cache, meta)
        else:
            out = self._attend_split(positions, qkv, kv_cache, meta, fused)
        return self.o_proj(out.reshape(tokens, q_size), reduce=not self.partial_output)

    def _attend_split(self, positions, qkv, kv_cache, meta, fused):
        """Q, K and V apart: Q/K norms (Qwen3, Gemma 3) and the GPU's fused kernels."""
        tokens = qkv.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(tokens, self.num_heads, self.head_dim)
        k = k.reshape(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        qk_norm = hasattr(self, "q_norm")
        if fused and not self.rotary.partial:     # norms, rotation and cache write in one launch
            norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps) if qk_norm else None
            fused.rope_and_cache(q, k, v, positions, self.rotary.cos, self.rotary.sin, kv_cache,
                                 meta.slot_mapping, norms)
            return self.triton_backend(q, kv_cache, meta)
        if qk_norm:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view_as(k)
        if fused:                                 # the fused kernel rotates whole heads only
            q, k = self.rotary(positions, q, k)
            write_kv(kv_cache, k, v, meta.slot_mapping)
            return self.triton_backend(q, kv_cache, meta)
        q, k = self.rotary(positions, q, k, meta.step_cache)
        return self.torch_backend(q, k, v, kv_cache, meta)

    @property
    def partial_output(self) -> bool:
        """forward returns this rank's partial sum (the next norm all-reduces it)."""
        return self.o_proj.can_defer_reduce


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); gate and up stored as one column-parallel matrix.
    act: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU, Gemma)."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TensorParallel,
                 activation: str = "silu"):
        super().__init__()
        self.activation = activation
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2,
                                                       tp=tp)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, tp=tp,
                                           input_piece=self.gate_up_proj.pieces[0])

    def forward(self, x):
        gate_up = self.gate_up_proj(x)
        fused = gpu_kernels(x)
        if fused and self.activation == "silu":
            activated = fused.silu_and_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            if self.activation == "silu":
                gate = torch.nn.functional.silu(gate)
            else:
                gate = torch.nn.functional.gelu(gate, approximate="tanh")
            activated = gate * up
        return self.down_proj(activated, reduce=not self.partial_output)

    @property
    def partial_output(self) -> bool:
        return self.down_proj.can_defer_reduce


class PreNormDecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)); `mlp` is any module with forward(x) and
    partial_output (dense GatedMLP, or a mixture of experts)."""

    def __init__(self, config: ModelConfig, attention: PagedSelfAttention, mlp: nn.Module,
                 tp: TensorParallel):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
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
