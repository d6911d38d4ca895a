"""Tensor-parallel state of this process: which shard it holds and the collectives it needs.

With one rank every collective is a no-op, so the model code reads the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


class SmallAllReduce:
    """One-shot all-reduce over symmetric memory for the small tensors of decode steps.

    Reading the peers' buffers directly over NVLink (no multicast). On 2 x H200 a back-to-back
    microbenchmark gave 6.3 us against NCCL's 22.5 us, but inside the 8B decode graph NCCL took
    6.6 us and this ~6.5-7 us: the gain at batch 1 comes from `norm`, the all-reduce fused with
    the add + RMSNorm after it (kernels/allreduce_norm.py), which this class also holds.
    Buffers are registered per size before CUDA graphs are captured (registration is a
    collective); other sizes use NCCL. A self-check against NCCL decides whether it is used.
    """

    MAX_BYTES = 1 << 20

    def __init__(self, group_name: str):
        self.group_name = group_name
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.enabled = True
        # Newer torch copies the local input into the symmetric buffer inside the reduce
        # kernel: one launch per all-reduce instead of a copy kernel and a reduce kernel.
        self.fuse_copy = hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy")
        self.norm = None          # AllReduceNorm: the reduce fused with the next add + norm

    def prepare_norm_fusion(self, hidden: int, dtype: torch.dtype, device, eps: float) -> bool:
        """Set up the fused all-reduce + add + RMSNorm kernel (a collective), checked once
        against NCCL + the plain norm; every rank keeps it or none does."""
        if not self.enabled or self.norm is not None:
            return self.norm is not None
        fused, ok = None, False
        try:
            from .kernels.allreduce_norm import AllReduceNorm

            fused = AllReduceNorm(self.group_name, dist.get_rank(), dist.get_world_size(),
                                  hidden, dtype, device)
            ok = all(_fused_norm_matches(fused, rows, hidden, dtype, device, eps)
                     for rows in (1, 3, fused.max_rows))
        except Exception:  # noqa: BLE001 - no Triton or no peer access: the two-kernel path
            ok = False
        if self._agree(ok, device):
            self.norm = fused
        return self.norm is not None

    def try_reduce_add_norm(self, partial: torch.Tensor, residual: torch.Tensor | None,
                            weight: torch.Tensor, eps: float):
        if self.norm is None or not self.norm.fits(partial):
            return None
        return self.norm(partial, residual, weight, eps)

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
        if self.fuse_copy:
            return torch.ops.symm_mem.one_shot_all_reduce_copy(buffer, tensor, "sum",
                                                              self.group_name)
        buffer.copy_(tensor)
        return torch.ops.symm_mem.one_shot_all_reduce(buffer, "sum", self.group_name)

    def self_check(self, device, dtype: torch.dtype) -> bool:
        """Compare with NCCL once (fused copy first, then the plain one-shot); on any
        difference or error, stay on NCCL. Every rank takes the same path."""
        for fuse_copy in dict.fromkeys((self.fuse_copy, False)):
            self.fuse_copy = fuse_copy
            if self._agree(self._matches_nccl(device, dtype), device):
                return True
        self.enabled = False
        return False

    def _matches_nccl(self, device, dtype: torch.dtype) -> bool:
        try:
            shape = (4, 1024)
            self.register(shape, dtype, device)
            value = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
            expected = value.clone()
            dist.all_reduce(expected)
            got = self.try_reduce(value)
            return bool(torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2e-2))
        except Exception:  # noqa: BLE001 - this torch or machine lacks it
            return False

    @staticmethod
    def _agree(ok: bool, device) -> bool:
        flag = torch.tensor([1 if ok else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def _fused_norm_matches(fused, rows: int, hidden: int, dtype, device, eps: float) -> bool:
    from .kernels.allreduce_norm import reference

    generator = torch.Generator(device=device).manual_seed(1234 + dist.get_rank())
    partial = torch.randn(rows, hidden, device=device, generator=generator).to(dtype)
    residual = torch.randn(rows, hidden, device=device, generator=generator).to(dtype)
    weight = (torch.rand(hidden, device=device, generator=generator) + 0.5).to(dtype)
    got, got_residual = fused(partial, residual, weight, eps)
    expected, expected_residual = reference(partial, residual, weight, eps)
    # equal but for float32 summation order: at most one rounding step apart
    return bool(torch.allclose(got_residual.float(), expected_residual.float(), atol=1e-2,
                               rtol=1e-2)
                and torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2e-2))


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    small_all_reduce: SmallAllReduce | None = None
    group: object = None      # the stage's ranks under pipeline parallelism; None: every rank

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
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_reduce_add_norm(self, partial: torch.Tensor, residual: torch.Tensor | None,
                            weight: torch.Tensor, eps: float):
        """(norm(all_reduce(partial) + residual), all_reduce(partial) + residual) in one
        kernel where the fused path is set up and the rows fit; else None."""
        if self.small_all_reduce is None:
            return None
        return self.small_all_reduce.try_reduce_add_norm(partial, residual, weight, eps)

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
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE = TensorParallel()
