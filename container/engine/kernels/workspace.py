"""Decode-kernel sizing and scratch buffers (no Triton import: the CPU path uses this too)."""

from __future__ import annotations

import math

import torch


def decode_splits(batch: int, kv_heads: int, max_seq_len: int, sm_count: int) -> int:
    """Splits of the KV range per sequence so that batch*kv_heads*splits fills the GPU."""
    wanted = math.ceil(2 * sm_count / max(batch * kv_heads, 1))
    return int(min(max(wanted, 1), 16, max(math.ceil(max_seq_len / 64), 1)))


class DecodeWorkspace:
    """Partial results of the split kernel, kept between steps (and across graph replays)."""

    def __init__(self):
        self.buffers: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def get(self, batch: int, heads: int, splits: int, dim: int, device) -> tuple:
        key = (batch, heads, splits, dim, str(device))
        if key not in self.buffers:
            self.buffers[key] = (
                torch.empty(batch, heads, splits, dim, dtype=torch.float32, device=device),
                torch.empty(batch, heads, splits, dtype=torch.float32, device=device),
                torch.empty(batch, heads, splits, dtype=torch.float32, device=device))
        return self.buffers[key]

    def arrivals(self, batch: int, kv_heads: int, device) -> torch.Tensor:
        """Per (sequence, KV head): how many splits have finished; each launch's last split
        sets it back to 0."""
        key = ("arrivals", batch, kv_heads, str(device))
        if key not in self.buffers:
            self.buffers[key] = torch.zeros(batch * kv_heads, dtype=torch.int32, device=device)
        return self.buffers[key]
