"""Fused elementwise kernels for the GPU path (Triton): one launch where PyTorch needs several.

- rms_norm: (x + residual) then RMSNorm; returns the normalised rows and the new residual.
- rope_and_cache: rotate q in place, rotate k, and write k and v into their KV-cache slots
  (an FP8 cache too).
- silu_and_mul: silu(gate) * up for the MLP.

At batch 1 a decode step is hundreds of tiny kernels; launches, not bandwidth, would dominate
without these.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, pdl_prologue


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, eps,
                     stride_x, stride_r, stride_o, stride_ro, N: tl.constexpr,
                     BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
    store_residual_and_norm(x, weight_ptr, out_ptr + row * stride_o,
                            residual_out_ptr + row * stride_ro, cols, ok, eps, N)


@triton.jit
def store_residual_and_norm(x, weight_ptr, out_row_ptr, residual_out_row_ptr, cols, ok, eps,
                            N: tl.constexpr):
    """x (float32, a row's sum so far) rounded to the activation type as transformers rounds
    it, stored as the new residual, then RMS-normalised and scaled into out."""
    element = out_row_ptr.dtype.element_ty
    x = x.to(element).to(tl.float32)
    tl.store(residual_out_row_ptr + cols, x.to(element), mask=ok)
    variance = tl.sum(x * x, 0) / N
    normed = (x * tl.rsqrt(variance + eps)).to(element)
    weight = tl.load(weight_ptr + cols, mask=ok, other=0.0)
    tl.store(out_row_ptr + cols, normed * weight, mask=ok)


NORM_WARPS: int | None = None          # a sweep's choice (decode_profile.py)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, n = x.shape
    out = torch.empty_like(x)
    residual_out = torch.empty_like(x)
    _rms_norm_kernel[(rows,)](
        x, residual if residual is not None else x, weight, out, residual_out, eps,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        residual_out.stride(0), N=n, BLOCK=triton.next_power_of_2(n),
        HAS_RESIDUAL=residual is not None,
        num_warps=NORM_WARPS or (8 if n >= 2048 else 4), **pdl_launch(x.device, rows))
    return out, residual_out


@triton.jit
def _cache_value(x, FP8_CACHE: tl.constexpr):
    """A value as the KV cache stores it: an FP8 cache (scale 1.0) gets it clamped to e4m3's
    range and rounded to nearest-even; a cache of the model's type as it is."""
    y = x
    if FP8_CACHE:       # resolved at compile time: one branch is built
        y = tl.clamp(x.to(tl.float32), -448.0, 448.0).to(tl.float8e4nv)
    return y


@triton.jit
def _head_norm(x1, x2, weight_ptr, i, i_ok, eps, HALF: tl.constexpr):
    """RMSNorm of each head (a row of x1 | x2, its two rotary halves), rounded as
    store_residual_and_norm rounds: normalised in float32, cast, then scaled."""
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    scale = tl.rsqrt((tl.sum(a * a, 1) + tl.sum(b * b, 1)) / (2 * HALF) + eps)[:, None]
    w1 = tl.load(weight_ptr + i, mask=i_ok, other=0.0)[None, :]
    w2 = tl.load(weight_ptr + HALF + i, mask=i_ok, other=0.0)[None, :]
    return (a * scale).to(x1.dtype) * w1, (b * scale).to(x2.dtype) * w2


@triton.jit
def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_ptr, sin_ptr, k_cache_ptr,
                       v_cache_ptr, slots_ptr, q_norm_ptr, k_norm_ptr, eps, stride_qt,
                       stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cos,
                       stride_cb, stride_cs, stride_ch, Q_HEADS: tl.constexpr,
                       KV_HEADS: tl.constexpr, HALF: tl.constexpr, HEADS_PAD: tl.constexpr,
                       HALF_PAD: tl.constexpr, PAGE: tl.constexpr, PDL: tl.constexpr,
                       QK_NORM: tl.constexpr, FP8_CACHE: tl.constexpr = False):
    pdl_prologue(PDL)
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
    if QK_NORM:
        q1, q2 = _head_norm(q1, q2, q_norm_ptr, i, i_ok, eps, HALF)
    c, s = cos.to(q1.dtype)[None, :], sin.to(q1.dtype)[None, :]
    tl.store(q_base, q1 * c - q2 * s, mask=q_ok)
    tl.store(q_base + HALF, q2 * c + q1 * s, mask=q_ok)

    k_ok = (heads < KV_HEADS)[:, None] & i_ok[None, :]
    k_base = k_ptr + token * stride_kt + heads[:, None] * stride_kh + i[None, :]
    k1 = tl.load(k_base, mask=k_ok, other=0.0)
    k2 = tl.load(k_base + HALF, mask=k_ok, other=0.0)
    if QK_NORM:
        k1, k2 = _head_norm(k1, k2, k_norm_ptr, i, i_ok, eps, HALF)
    v_base = v_ptr + token * stride_vt + heads[:, None] * stride_vh + i[None, :]
    v1 = tl.load(v_base, mask=k_ok, other=0.0)
    v2 = tl.load(v_base + HALF, mask=k_ok, other=0.0)
    slot = tl.load(slots_ptr + token)
    cache = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_cs + heads[:, None] * stride_ch \
        + i[None, :]
    tl.store(k_cache_ptr + cache, _cache_value(k1 * c - k2 * s, FP8_CACHE), mask=k_ok)
    tl.store(k_cache_ptr + cache + HALF, _cache_value(k2 * c + k1 * s, FP8_CACHE), mask=k_ok)
    tl.store(v_cache_ptr + cache, _cache_value(v1, FP8_CACHE), mask=k_ok)
    tl.store(v_cache_ptr + cache + HALF, _cache_value(v2, FP8_CACHE), mask=k_ok)


def rope_and_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor,
                   slots: torch.Tensor, qk_norms: tuple | None = None) -> None:
    """q [T, Hq, D] rotated in place; rotated k and v stored at their slots in kv_cache.
    qk_norms: (q weight [D], k weight [D], eps): each head RMS-normalised before it is
    rotated (Qwen3, Gemma 3), in the same launch."""
    tokens, q_heads, dim = q.shape
    kv_heads = k.shape[1]
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    q_norm, k_norm, eps = qk_norms or (q, k, 0.0)
    _rope_cache_kernel[(tokens,)](
        q, k, v, positions, cos, sin, k_cache, v_cache, slots, q_norm, k_norm, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        Q_HEADS=q_heads, KV_HEADS=kv_heads, HALF=dim // 2,
        HEADS_PAD=triton.next_power_of_2(max(q_heads, kv_heads)),
        HALF_PAD=triton.next_power_of_2(dim // 2), PAGE=k_cache.shape[1], num_warps=4,
        QK_NORM=qk_norms is not None, FP8_CACHE=kv_cache.dtype == torch.float8_e4m3fn,
        **pdl_launch(q.device, tokens))


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, N: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_prologue(PDL)
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
                                                    BLOCK=block, num_warps=4,
                                                    **pdl_launch(x.device, rows))
    return out


@triton.jit
def _argmax_part_kernel(x_ptr, value_ptr, index_ptr, N, stride_x, PARTS: tl.constexpr,
                        CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    begin = part * CHUNK
    lanes = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    where = begin + lanes                               # each lane's earliest maximum
    for start in range(begin, begin + CHUNK, BLOCK):
        cols = start + lanes
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < N,
                    other=float("-inf")).to(tl.float32)
        better = x > best
        best = tl.where(better, x, best)
        where = tl.where(better, cols, where)
    top = tl.max(best, 0)
    first = tl.min(tl.where(best == top, where, 2147483647), 0)
    tl.store(value_ptr + row * PARTS + part, top)
    tl.store(index_ptr + row * PARTS + part, first)


@triton.jit
def _argmax_final_kernel(value_ptr, index_ptr, out_ptr, PARTS: tl.constexpr,
                         PARTS_PAD: tl.constexpr):
    row = tl.program_id(0)
    parts = tl.arange(0, PARTS_PAD)
    ok = parts < PARTS
    values = tl.load(value_ptr + row * PARTS + parts, mask=ok, other=float("-inf"))
    indices = tl.load(index_ptr + row * PARTS + parts, mask=ok, other=2147483647)
    top = tl.max(values, 0)
    tl.store(out_ptr + row, tl.min(tl.where(values == top, indices, 2147483647), 0).to(tl.int64))


def argmax_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = the first index of row i's maximum (torch.argmax's answer), in two launches
    that spread each row over many programs; torch's reduction gives a batch-1 row of a
    128k vocabulary to one block (37 us on an H200, against ~3 here)."""
    rows, n = x.shape
    chunk = 4096
    parts = triton.cdiv(n, chunk)
    values = torch.empty(rows, parts, dtype=torch.float32, device=x.device)
    indices = torch.empty(rows, parts, dtype=torch.int32, device=x.device)
    _argmax_part_kernel[(rows, parts)](x, values, indices, n, x.stride(0), PARTS=parts,
                                       CHUNK=chunk, BLOCK=1024, num_warps=4)
    _argmax_final_kernel[(rows,)](values, indices, out, PARTS=parts,
                                  PARTS_PAD=triton.next_power_of_2(parts), num_warps=1)
    return out
