"""Triton matrix products for decode batches (M ~ 256), measured against cuBLAS by
decode_profile.py's gemm phase: y = x @ W^T with W [N, K] row-major, and the gate/up product
with silu(gate) * up in its epilogue (no separate kernel, half the output written).

Two load paths: plain pointers (cp.async pipelining) and tensor descriptors (Hopper's bulk
tensor copies).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pm = first_m + (pid % in_group) % size_m
    pn = (pid % in_group) // size_m
    return pm, pn


@triton.jit
def _mm_ptr_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_x, stride_w, stride_o,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   GROUP_M: tl.constexpr, SILU: tl.constexpr):
    pm, pn = _tile(M, N, BM, BN, GROUP_M)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok = rm < M
    x = x_ptr + rm[:, None] * stride_x + rk[None, :]
    w = w_ptr + rn[None, :] * stride_w + rk[:, None]
    acc = tl.zeros([BM, BN], tl.float32)
    if SILU:
        w_up = w + N * stride_w
        acc_up = tl.zeros([BM, BN], tl.float32)
    for _ in range(0, K, BK):
        a = tl.load(x, mask=m_ok[:, None], other=0.0)
        acc = tl.dot(a, tl.load(w), acc)
        if SILU:
            acc_up = tl.dot(a, tl.load(w_up), acc_up)
            w_up += BK
        x += BK
        w += BK
    if SILU:
        gate = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        up = acc_up.to(out_ptr.dtype.element_ty)
        result = (gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up
    else:
        result = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm[:, None] * stride_o + rn[None, :], result, mask=m_ok[:, None])


@triton.jit
def _mm_tma_kernel(x_desc, w_desc, out_desc, M, N, K,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   GROUP_M: tl.constexpr, SILU: tl.constexpr):
    pm, pn = _tile(M, N, BM, BN, GROUP_M)
    acc = tl.zeros([BM, BN], tl.float32)
    if SILU:
        acc_up = tl.zeros([BM, BN], tl.float32)
    for k in range(0, K, BK):
        a = x_desc.load([pm * BM, k])
        acc = tl.dot(a, w_desc.load([pn * BN, k]).T, acc)
        if SILU:
            acc_up = tl.dot(a, w_desc.load([N + pn * BN, k]).T, acc_up)
    if SILU:
        gate = acc.to(tl.bfloat16).to(tl.float32)
        up = acc_up.to(tl.bfloat16)
        result = (gate / (1.0 + tl.exp(-gate))).to(tl.bfloat16) * up
    else:
        result = acc.to(tl.bfloat16)
    out_desc.store([pm * BM, pn * BN], result)


def matmul(x: torch.Tensor, weight: torch.Tensor, config: dict, silu: bool = False,
           tma: bool = False) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T; silu=True: weight is [gate; up] (2n rows) and the result
    is silu(x @ gate^T) * (x @ up^T), [M, n]."""
    m, k = x.shape
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    bm, bn, bk = config["BM"], config["BN"], config["BK"]
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    meta = dict(BM=bm, BN=bn, BK=bk, GROUP_M=config.get("GROUP_M", 8), SILU=silu,
                num_warps=config["warps"], num_stages=config["stages"])
    if tma:
        _mm_tma_kernel[grid](TensorDescriptor.from_tensor(x, [bm, bk]),
                             TensorDescriptor.from_tensor(weight, [bn, bk]),
                             TensorDescriptor.from_tensor(out, [bm, bn]), m, n, k, **meta)
    else:
        _mm_ptr_kernel[grid](x, weight, out, m, n, k, x.stride(0), weight.stride(0),
                             out.stride(0), **meta)
    return out


CONFIGS = [dict(BM=bm, BN=bn, BK=64, warps=w, stages=s)
           for bm, bn, w, s in ((128, 128, 4, 4), (128, 128, 8, 4), (128, 256, 8, 3),
                                (256, 128, 8, 3), (64, 128, 4, 4), (64, 256, 4, 4),
                                (128, 64, 4, 4), (256, 64, 8, 4))]
