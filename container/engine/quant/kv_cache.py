"""The KV cache's element type: the model's (`auto`) or FP8 (float8_e4m3fn, one byte a value,
so twice the blocks of a bf16 cache fit the same memory).

The FP8 cache uses a scale of 1.0 for every layer: K and V are stored as they are, clamped to
e4m3's range (+-448), and read back to the attention's type. Rotated keys and values of the
models served here sit far inside that range; e4m3 keeps 3 mantissa bits (relative rounding
error under 2^-4) for magnitudes from 2^-6 up, and subnormal steps of 2^-9 below.
"""

from __future__ import annotations

import torch

from .fp8 import FP8, FP8_MAX

KV_CACHE_DTYPES = {"fp8": FP8}


def resolve_kv_dtype(option: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """option.kv_cache_dtype (auto | fp8, already validated) -> the cache's element type."""
    return KV_CACHE_DTYPES.get(option or "auto", model_dtype)


# torch's CPU indexing kernels (index_copy_, gathers) have no FP8 version: an FP8 cache is
# indexed as bytes (a free view) and its bytes are read back as FP8.

def storage(kv_cache: torch.Tensor) -> torch.Tensor:
    """The cache as it is indexed: bytes for an FP8 cache, itself otherwise."""
    return kv_cache.view(torch.uint8) if kv_cache.dtype == FP8 else kv_cache


def to_cache(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """Values in the cache's storage form (see storage()); unchanged for a cache of their own
    type."""
    if x.dtype == cache_dtype:
        return x
    if cache_dtype == FP8:          # torch makes out-of-range values NaN, not the maximum
        return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)
    return x.to(cache_dtype)


def from_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Values gathered from storage(cache), in the attention's type."""
    if x.dtype == torch.uint8:
        x = x.view(FP8)
    return x if x.dtype == dtype else x.to(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {FP8: "fp8_e4m3", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float32: "fp32"}.get(dtype, str(dtype))
