"""Per-token FP8 quantization of activations (Triton): x [M, K] -> q [M, K] float8_e4m3fn and
scale [M, 1] float32 with q * scale ~= x, one launch.

_scaled_mm needs its input in FP8 with one scale per row. In PyTorch that is five kernels
(abs, amax, divide, clamp, cast) and a float32 copy of x before every FP8 matmul; here each
program reads its row twice (largest magnitude, then the scaled values) and writes one byte
a value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, pdl_prologue


@triton.jit
def _per_token_quant_kernel(x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q, fp8_max,
                            min_scale, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    for start in range(0, K, BLOCK):
        ok = start + cols < K
        x = tl.load(x_ptr + row * stride_x + start + cols, mask=ok, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    scale = tl.maximum(tl.max(amax, 0) / fp8_max, min_scale)
    tl.store(scale_ptr + row, scale)
    for start in range(0, K, BLOCK):
        ok = start + cols < K
        x = tl.load(x_ptr + row * stride_x + start + cols, mask=ok, other=0.0)
        q = tl.clamp(x.to(tl.float32) / scale, -fp8_max, fp8_max)
        tl.store(q_ptr + row * stride_q + start + cols, q.to(tl.float8e4nv), mask=ok)


def per_token_quant(x: torch.Tensor, fp8_max: float, min_scale: float):
    """x [M, K] (last dimension contiguous) -> (q [M, K] fp8, scale [M, 1] float32)."""
    rows, k = x.shape
    q = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    block = min(4096, triton.next_power_of_2(k))
    _per_token_quant_kernel[(rows,)](x, q, scale, k, x.stride(0), q.stride(0), fp8_max,
                                     min_scale, BLOCK=block, num_warps=8 if block >= 2048 else 4,
                                     **pdl_launch(x.device, rows))
    return q, scale
