"""RMSNorm, optionally fused with the residual add that precedes it, and with tensor
parallelism with the all-reduce before that (the input is then each rank's partial sum)."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import gpu_kernels
from ..parallel import SINGLE, TensorParallel


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, tp: TensorParallel = SINGLE,
                 unit_offset: bool = False):
        """unit_offset: the checkpoint stores w and the norm scales by (1 + w) (Gemma); we add
        the one once at load, so every path (fused kernels included) is the plain norm."""
        super().__init__()
        self.eps = eps
        self.tp = tp
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        if unit_offset:
            self.weight.weight_loader = self._load_plus_one

    @staticmethod
    def _load_plus_one(param, tensor_slice, shard_id=None):
        value = tensor_slice[:]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"norm: checkpoint shape {tuple(value.shape)} does not match "
                             f"{tuple(param.shape)}")
        param.data.copy_(value.float() + 1.0)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                partial: bool = False):
        """Without residual: norm(x). With residual: (norm(x + residual), x + residual).
        partial: x is this rank's partial sum; it is all-reduced first, and the result is
        always the pair (with no residual, the reduced x is the new residual)."""
        if partial and self.tp.enabled:
            fused_reduce = self.tp.all_reduce_add_norm(x, residual, self.weight, self.eps)
            if fused_reduce is not None:
                return fused_reduce
            x = self.tp.all_reduce(x)
        if partial and residual is None:
            return self.forward(x), x
        fused = gpu_kernels(x)
        if fused:
            out, new_residual = fused.rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, new_residual)
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)
