"""FP8 (float8_e4m3fn) numerics and the FP8 matmul.

Weights: one float32 scale per output channel (row), w ~= q * scale[row]. Activations: one
scale per token (row of x), computed on the fly, so no calibration is needed.

The matmul picks, per call:
- one token on a GPU with Triton: the FP8 GEMV (kernels/gemv.py), which reads the FP8 weight
  once and multiplies in float32 (the activation is not quantized: at batch 1 the step is
  bound by reading the weight, not by the multiply);
- more tokens on a GPU with FP8 tensor cores (sm_89+): torch._scaled_mm with row-wise
  scales (per-token x per-channel), the activation quantized per token first;
- anywhere else (CPU, older GPUs, shapes _scaled_mm refuses): the reference, the weight
  dequantized to the activation's type and a plain matmul. CPU tests check this one.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)          # 448
# A row of zeros still gets a usable scale (its quantized values are all zero anyway).
MIN_SCALE = 1e-12


def channel_amax(weight: torch.Tensor) -> torch.Tensor:
    """Largest magnitude of each output row, float32 [N]."""
    return weight.abs().amax(dim=1).float()


def quantize_per_channel(weight: torch.Tensor, amax: torch.Tensor | None = None):
    """weight [N, K] -> (q [N, K] fp8, scale [N] float32). amax: each row's largest magnitude
    when the row is wider than this tensor (row-parallel shards use the whole row's)."""
    amax = channel_amax(weight) if amax is None else amax
    scale = (amax / FP8_MAX).clamp(min=MIN_SCALE)
    q = (weight.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [N, K] fp8 with scale [N] -> [N, K] in dtype (scaled in float32, then rounded)."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def quantize_per_token(x: torch.Tensor):
    """x [M, K] -> (q [M, K] fp8, scale [M, 1] float32): one scale per row (token)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp(min=MIN_SCALE)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """What _scaled_mm sees of x, back in x's type (for checks of the GPU path)."""
    q, scale = quantize_per_token(x)
    return (q.float() * scale).to(x.dtype)


def linear_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, dequantize(weight, scale, x.dtype), bias)


def quantize_activations(x: torch.Tensor):
    """quantize_per_token, in one Triton launch where the kernels run."""
    from ..kernels import gpu_kernels

    if gpu_kernels(x) is not None and x.stride(-1) == 1:
        from ..kernels.quant import per_token_quant

        return per_token_quant(x, FP8_MAX, MIN_SCALE)
    return quantize_per_token(x)


def linear_scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16) @ (weight [N, K] fp8 * scale[N])^T on FP8 tensor cores."""
    q, x_scale = quantize_activations(x)
    # row-wise scaling: a [M, K] row-major, b [K, N] column-major (the weight's transpose)
    out = torch._scaled_mm(q, weight.t(), scale_a=x_scale, scale_b=scale.view(1, -1),
                           out_dtype=torch.bfloat16)
    out = out if x.dtype == torch.bfloat16 else out.to(x.dtype)
    return out if bias is None else out + bias


_SCALED_MM: dict[int, bool] = {}


def scaled_mm_supported(device: torch.device) -> bool:
    """FP8 tensor cores (Ada / Hopper and later) and a torch with _scaled_mm."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SCALED_MM:
        major, minor = torch.cuda.get_device_capability(index)
        _SCALED_MM[index] = hasattr(torch, "_scaled_mm") and (major, minor) >= (8, 9)
        if not _SCALED_MM[index]:
            log.warning("FP8: this GPU (sm_%d%d) has no FP8 tensor cores; multi-token "
                        "matmuls dequantize the weights first (slow)", major, minor)
    return _SCALED_MM[index]


def _gemv_usable(x: torch.Tensor) -> bool:
    from ..kernels import gpu_kernels

    return x.shape[0] == 1 and gpu_kernels(x) is not None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ (weight [N, K] fp8, per-row scale [N] float32)^T (+ bias) -> [M, N]."""
    if _gemv_usable(x):
        from ..kernels.gemv import gemv_fp8

        out = gemv_fp8(x.contiguous(), weight, scale)
        return out if bias is None else out + bias
    n, k = weight.shape
    if x.is_cuda and os.environ.get("SERVE_KERNELS") != "0" and n % 16 == 0 and k % 16 == 0 \
            and x.dtype in (torch.bfloat16, torch.float16) and scaled_mm_supported(x.device):
        return linear_scaled_mm(x, weight, scale, bias)
    return linear_reference(x, weight, scale, bias)
