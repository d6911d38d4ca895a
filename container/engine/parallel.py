"""Tensor-parallel state of this process: which shard it holds and the collectives it needs.

With one rank every collective is a no-op, so the model code reads the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


class SmallAllReduce:
    """One-shot all-reduce over symmetric memory for the small tensors of decode steps.

    NCCL takes ~22 us for a decode-sized all-reduce on H200s; reading the peers' buffers
    directly over NVLink (no multicast) takes ~6 us, and a decode step has two per layer.
    Buffers are registered per size before CUDA graphs are captured (registration is a
    collective); other sizes use NCCL. A self-check against NCCL decides whether it is used.
    """

    MAX_BYTES = 1 << 20

    def __init__(self, group_name: str):
        self.group_name = group_name
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.enabled = True

    def register(self, shape: tuple, dtype: torch.dtype, device) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        key = (tuple(shape), dtype)
        numel = 1
        for n in shape:
            numel *= n
        if not self.enabled or key in self.buffers or numel * dtype.itemsize > self.MAX_BYTES:
            return
        buffer = symm_mem.empty(*shape, device=device, dtype=dtype)
        symm_mem.rendezvous(buffer, self.group_name)
        self.buffers[key] = buffer

    def try_reduce(self, tensor: torch.Tensor) -> torch.Tensor | None:
        buffer = self.buffers.get((tuple(tensor.shape), tensor.dtype)) if self.enabled else None
        if buffer is None:
            return None
        buffer.copy_(tensor)
        return torch.ops.symm_mem.one_shot_all_reduce(buffer, "sum", self.group_name)

    def self_check(self, device, dtype: torch.dtype) -> bool:
        """Compare with NCCL once; on any difference or error, stay on NCCL."""
        try:
            shape = (4, 1024)
            self.register(shape, dtype, device)
            value = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
            expected = value.clone()
            dist.all_reduce(expected)
            got = self.try_reduce(value)
            self.enabled = bool(torch.allclose(got.float(), expected.float(), atol=2e-2,
                                               rtol=2e-2))
        except Exception:  # noqa: BLE001 - this torch or machine lacks it: NCCL it is
            self.enabled = False
        agreed = torch.tensor([1 if self.enabled else 0], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)    # every rank must take the same path
        self.enabled = bool(agreed.item())
        return self.enabled


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    small_all_reduce: SmallAllReduce | None = None

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
        if not self.enabled:
            return tensor
        if self.small_all_reduce is not None:
            reduced = self.small_all_reduce.try_reduce(tensor)
            if reduced is not None:
                return reduced
        dist.all_reduce(tensor)
        return tensor

    def broadcast_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rank 0's sampled tokens to every rank (they feed the next overlapped step)."""
        if self.enabled:
            dist.broadcast(tokens, src=0)
        return tokens

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's shard along the last dimension."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=-1)


SINGLE = TensorParallel()
