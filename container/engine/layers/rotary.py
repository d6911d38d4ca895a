"""Rotary position embedding (rotate-half layout) and the scalings checkpoints use: linear,
dynamic NTK, YaRN, llama3 and LongRoPE (Phi-3 "su"), optionally over only the first
`partial_rotary_factor` of each head (Phi-4-mini).

Every scaling becomes a static table of cos/sin per position, so the GPU path (fused kernel,
CUDA graphs) needs nothing per scaling. Two scalings that transformers recomputes as a
sequence grows are fixed up front instead: dynamic NTK uses the base for the longest sequence
served (max_model_len), and LongRoPE uses its short factors for positions inside the original
context and its long factors beyond (transformers switches a whole sequence to the long
factors once it grows past that).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import StartupError

SUPPORTED_SCALING = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


def _base_frequencies(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, theta: float, scaling: dict, max_positions: int):
    """Interpolate the low frequencies, keep the high ones, ramp linearly between the
    dimensions that turn beta_fast and beta_slow times over the original context."""
    original = float(scaling["original_max_position_embeddings"])
    factor = float(scaling.get("factor") or max_positions / original)
    attention = scaling.get("attention_factor")
    if attention is None:
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
                     if mscale and mscale_all else _yarn_mscale(factor))
    fast = scaling.get("beta_fast") or 32
    slow = scaling.get("beta_slow") or 1

    def dim_turning(turns):     # the dimension whose wavelength fits `turns` times
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_turning(fast), dim_turning(slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp                                  # 1: extrapolate (keep the frequency)
    base = _base_frequencies(dim, theta)
    return base / factor * (1 - keep) + base * keep, float(attention)


def _longrope_factor(scaling: dict, max_positions: int) -> tuple[int, float]:
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or max_positions / original
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return original, float(attention)


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None,
                        max_positions: int = 0, long: bool = False, served: int = 0):
    """(inverse frequencies of the rotated dims, factor on cos/sin).
    max_positions: the model's max_position_embeddings (the scalings' reference length);
    served: the longest sequence served (dynamic NTK); long: LongRoPE's long factors."""
    scaling = scaling or {}
    dim = int(head_dim * float(scaling.get("partial_rotary_factor", 1.0)))
    kind = scaling.get("rope_type", "default")
    if kind == "default":
        return _base_frequencies(dim, theta), 1.0
    if kind == "linear":
        return _base_frequencies(dim, theta) / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(_base_frequencies(dim, theta), scaling), 1.0
    if kind == "dynamic":
        factor = float(scaling["factor"])
        original = max_positions
        served = max(served, original)
        theta = theta * ((factor * served / original) - (factor - 1)) ** (dim / (dim - 2))
        return _base_frequencies(dim, theta), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, scaling, max_positions)
    if kind in ("longrope", "su"):
        _, attention = _longrope_factor(scaling, max_positions)
        factors = torch.tensor(scaling["long_factor" if long else "short_factor"],
                               dtype=torch.float32)
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (factors * theta ** exponents), attention
    raise StartupError(f"rope_scaling type {kind!r} is not supported by the native engine; "
                       f"supported: {', '.join(SUPPORTED_SCALING)}")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None,
                 model_max_positions: int | None = None):
        """max_positions: table length (max_model_len); model_max_positions: the config's
        max_position_embeddings (the scalings' reference length)."""
        super().__init__()
        reference = model_max_positions or max_positions
        kind = (scaling or {}).get("rope_type", "default")
        inv_freq, attention = inverse_frequencies(head_dim, theta, scaling, reference,
                                                  served=max_positions)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        if kind in ("longrope", "su"):
            original, _ = _longrope_factor(scaling, reference)
            long_freq, _ = inverse_frequencies(head_dim, theta, scaling, reference, long=True)
            beyond = positions >= original
            freqs[beyond] = torch.outer(positions[beyond], long_freq)
        self.rotary_dim = 2 * inv_freq.shape[0]
        self.partial = self.rotary_dim != head_dim
        # float32 cos/sin, as transformers computes them; cast to the activation type when used
        self.register_buffer("cos", freqs.cos() * attention, persistent=False)
        self.register_buffer("sin", freqs.sin() * attention, persistent=False)
        self._full = None

    def full_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, and sin with its first half negated, both halves side by side: the torch path
        then rotates with one roll (x2, x1) and no negation, exactly as transformers'
        rotate_half. Made on first use, so GPU runs (fused kernels) never hold them."""
        if self._full is None or self._full[0].device != self.cos.device:
            self._full = (torch.cat((self.cos, self.cos), dim=-1),
                          torch.cat((-self.sin, self.sin), dim=-1))
        return self._full

    def step_tables(self, positions: torch.Tensor, dtype: torch.dtype,
                    step_cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin at the step's positions, [T, 1, D] in the activations' type.
        Every layer of a step rotates the same positions: with the step's cache (the
        attention metadata's), the gather and cast run once per step instead of per layer."""
        key = ("rotary", id(self), dtype)
        tables = step_cache.get(key) if step_cache is not None else None
        if tables is None:
            cos_full, sin_full = self.full_tables()
            tables = (cos_full[positions].to(dtype).unsqueeze(1),
                      sin_full[positions].to(dtype).unsqueeze(1))
            if step_cache is not None:
                step_cache[key] = tables
        return tables

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                step_cache: dict | None = None):
        """q: [T, Hq, D], k: [T, Hk, D] -> rotated (new tensors)."""
        cos, sin = self.step_tables(positions, q.dtype, step_cache)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def rotate_heads(self, positions: torch.Tensor, heads: torch.Tensor,
                     step_cache: dict | None = None) -> torch.Tensor:
        """Rotate every head of [T, H, D] at once (Q and K heads side by side, as the fused
        QKV projection leaves them): half the small ops of rotating Q and K apart."""
        return self._rotate(heads, *self.step_tables(positions, heads.dtype, step_cache))

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D]; with partial rotary only the first rotary_dim of each head turn."""
        if not self.partial:
            return _rotate(x, cos, sin)
        r = self.rotary_dim
        return torch.cat((_rotate(x[..., :r], cos, sin), x[..., r:]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos, sin: [T, 1, D], the tables' halves side by side, sin's first half negated; x * cos
    + rotate_half(x) * sin with rotate_half(x) = (-x2, x1) = roll(x) * sign."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
