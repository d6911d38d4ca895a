"""Fused elementwise kernels for the GPU path (Triton): one launch where PyTorch needs several.

- rms_norm: (x + residual) then RMSNorm; returns the normalised rows and the new residual.
- rope_and_cache: rotate q in place, rotate k, and write k and v into their KV-cache slots.
- silu_and_mul: silu(gate) * up for the MLP.

At batch 1 a decode step is hundreds of tiny kernels; launches, not bandwidth, would dominate
without these.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, eps,
                     stride_x, stride_r, stride_o, stride_ro, N: tl.constexpr,
                     BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
    # transformers rounds the sum to the activation type before normalising
    x = x.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(residual_out_ptr + row * stride_ro + cols, x.to(out_ptr.dtype.element_ty), mask=ok)
    variance = tl.sum(x * x, 0) / N
    normed = (x * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=ok, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, normed * weight, mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, n = x.shape
    out = torch.empty_like(x)
    residual_out = torch.empty_like(x)
    _rms_norm_kernel[(rows,)](
        x, residual if residual is not None else x, weight, out, residual_out, eps,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        residual_out.stride(0), N=n, BLOCK=triton.next_power_of_2(n),
        HAS_RESIDUAL=residual is not None, num_warps=8 if n >= 2048 else 4)
    return out, residual_out


@triton.jit
def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_ptr, sin_ptr, k_cache_ptr,
                       v_cache_ptr, slots_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                       stride_vt, stride_vh, stride_cos, stride_cb, stride_cs, stride_ch,
                       Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr,
                       HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr, PAGE: tl.constexpr):
    token = tl.program_id(0)
    position = tl.load(positions_ptr + token)
    i = tl.arange(0, HALF_PAD)
    i_ok = i < HALF
    cos = tl.load(cos_ptr + position * stride_cos + i, mask=i_ok, other=0.0)
    sin = tl.load(sin_ptr + position * stride_cos + i, mask=i_ok, other=0.0)
    heads = tl.arange(0, HEADS_PAD)

    q_ok = (heads < Q_HEADS)[:, None] & i_ok[None, :]
    q_base = q_ptr + token * stride_qt + heads[:, None] * stride_qh + i[None, :]
    q1 = tl.load(q_base, mask=q_ok, other=0.0)
    q2 = tl.load(q_base + HALF, mask=q_ok, other=0.0)
    c, s = cos.to(q1.dtype)[None, :], sin.to(q1.dtype)[None, :]
    tl.store(q_base, q1 * c - q2 * s, mask=q_ok)
    tl.store(q_base + HALF, q2 * c + q1 * s, mask=q_ok)

    k_ok = (heads < KV_HEADS)[:, None] & i_ok[None, :]
    k_base = k_ptr + token * stride_kt + heads[:, None] * stride_kh + i[None, :]
    k1 = tl.load(k_base, mask=k_ok, other=0.0)
    k2 = tl.load(k_base + HALF, mask=k_ok, other=0.0)
    v_base = v_ptr + token * stride_vt + heads[:, None] * stride_vh + i[None, :]
    v1 = tl.load(v_base, mask=k_ok, other=0.0)
    v2 = tl.load(v_base + HALF, mask=k_ok, other=0.0)
    slot = tl.load(slots_ptr + token)
    cache = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_cs + heads[:, None] * stride_ch \
        + i[None, :]
    tl.store(k_cache_ptr + cache, k1 * c - k2 * s, mask=k_ok)
    tl.store(k_cache_ptr + cache + HALF, k2 * c + k1 * s, mask=k_ok)
    tl.store(v_cache_ptr + cache, v1, mask=k_ok)
    tl.store(v_cache_ptr + cache + HALF, v2, mask=k_ok)


def rope_and_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor,
                   slots: torch.Tensor) -> None:
    """q [T, Hq, D] rotated in place; rotated k and v stored at their slots in kv_cache."""
    tokens, q_heads, dim = q.shape
    kv_heads = k.shape[1]
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _rope_cache_kernel[(tokens,)](
        q, k, v, positions, cos, sin, k_cache, v_cache, slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        Q_HEADS=q_heads, KV_HEADS=kv_heads, HALF=dim // 2,
        HEADS_PAD=triton.next_power_of_2(max(q_heads, kv_heads)),
        HALF_PAD=triton.next_power_of_2(dim // 2), PAGE=k_cache.shape[1], num_warps=4)


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + cols, mask=ok, other=0.0)
    silu = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
    tl.store(out_ptr + row * stride_o + cols, silu * up, mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    rows, double = x.shape
    n = double // 2
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](x, out, x.stride(0), out.stride(0), N=n,
                                                    BLOCK=block, num_warps=4)
    return out
