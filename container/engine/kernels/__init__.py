"""GPU kernels (Triton). `gpu_kernels(tensor)` gives the fused-kernel module for a CUDA tensor
when Triton is there, else None: the model then runs its plain PyTorch path (CPU, tests)."""

from __future__ import annotations

import os

_FUSED = None
_CHECKED = False


def gpu_kernels(tensor):
    """SERVE_KERNELS=0 forces the PyTorch path on GPU too (the reference the kernels are checked
    against); SERVE_KERNELS_ON_CPU=1 runs the kernels on CPU tensors (Triton's interpreter)."""
    global _FUSED, _CHECKED
    if os.environ.get("SERVE_KERNELS") == "0":
        return None
    if not tensor.is_cuda and os.environ.get("SERVE_KERNELS_ON_CPU") != "1":
        return None
    if not _CHECKED:
        _CHECKED = True
        try:
            from . import fused as module
            _FUSED = module
        except ImportError:
            _FUSED = None
    return _FUSED
