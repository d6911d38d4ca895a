"""Tensor-parallel state of this process: which shard it holds and the collectives it needs.

With one rank every collective is a no-op, so the model code reads the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def split(self, total: int, what: str) -> int:
        """This rank's share of `total` (which must divide evenly)."""
        if total % self.size:
            raise ValueError(f"{what}={total} does not divide evenly across "
                             f"tensor_parallel_degree={self.size}")
        return total // self.size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's shard along the last dimension."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=-1)


SINGLE = TensorParallel()
