"""Matrix-vector product for batch-1 decode (Triton): y = W x for one token.

At batch 1 every projection is a GEMV that must stream its whole weight once; cuBLAS reaches
~4.2 TB/s on the big ones but much less on the 4096-wide attention projections. Each program
here owns a few output rows and streams their full width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
           for n, k, w, s in ((4, 1024, 4, 4), (8, 512, 4, 4), (8, 1024, 8, 3),
                              (16, 512, 8, 3), (16, 256, 4, 4), (32, 256, 8, 3))]


@triton.autotune(configs=CONFIGS, key=["N", "K"])
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, N, K, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(out_ptr + rows, tl.sum(acc, 1).to(out_ptr.dtype.element_ty), mask=row_ok)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T -> [1, N]."""
    n, k = weight.shape
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _gemv_kernel[grid](x, weight, out, n, k, weight.stride(0))
    return out


@triton.autotune(configs=CONFIGS, key=["N", "K"])
@triton.jit
def _silu_mul_gemv_kernel(x_ptr, w_ptr, out_ptr, N, K, stride_w,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # x = [gate | up] of one token; the product's input is silu(gate) * up, rounded as
    # fused.silu_and_mul rounds it, computed on the fly instead of in a kernel of its own
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        gate = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0)
        x = (gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(out_ptr + rows, tl.sum(acc, 1).to(out_ptr.dtype.element_ty), mask=row_ok)


def silu_mul_gemv(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """gate_up [1, 2K] -> (silu(gate) * up) @ weight[N, K]^T, [1, N]."""
    n, k = weight.shape
    out = torch.empty(1, n, dtype=gate_up.dtype, device=gate_up.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _silu_mul_gemv_kernel[grid](gate_up, weight, out, n, k, weight.stride(0))
    return out
