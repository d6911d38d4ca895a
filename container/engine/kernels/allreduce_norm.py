"""All-reduce, residual add and RMSNorm in one kernel, for tensor-parallel decode (Triton).

Every row-parallel product (attention output, MLP down, the vocab-parallel embedding) is
followed by an all-reduce and then the next norm. At batch 1 on 2 x H200 the two kernels took
~6.6 us (NCCL) + ~2.1 us each, 65 times a step, ~0.56 ms of a 2.87 ms step; this kernel takes
~5.6 us (bench/results/tp_decode_profile_tp2_h200x2.json: 2.73 ms a step without PDL).

One program per row, and no flags (a "Lamport" exchange: the data is its own signal):

1. stores this rank's partial row into slot `epoch % 3` of every rank's buffer (NVLink stores
   into the peers' symmetric memory); slots hold -0.0 (the sentinel) until written, and a
   partial's own -0.0 is sent as +0.0;
2. reads its own buffer's slot until no element of any rank's row is the sentinel;
3. sums the ranks' partials in rank order (every rank gets the same bits), adds the residual,
   writes the new residual and the normalised row;
4. resets the slot of the epoch before to the sentinel.

Three slots suffice: a peer is at most one epoch ahead (it cannot finish an epoch without this
rank's row), so while this rank works on epoch e, peers write slots e and e+1 only, and slot
e-1 is free to clear. The clearing stores land before the next kernel in the stream starts,
and so before any rank can write that slot again. Epochs live on the device (one counter per
row), so the kernel can sit in a CUDA graph. Every rank runs the same rows in the same order
(the ranks execute one plan), so the counters agree.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fused import store_residual_and_norm
from .pdl import pdl_launch, pdl_prologue

SENTINEL_BITS = tl.constexpr(-32768)      # 0x8000: -0.0 in bf16 and fp16, "not written yet"
SLOTS = 3


@triton.jit
def _allreduce_add_norm_kernel(partial_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
                               buffer_ptrs, epoch_ptr, eps, stride_p, stride_r, stride_o,
                               stride_ro, RANK: tl.constexpr, WORLD: tl.constexpr,
                               MAX_ROWS: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
                               HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    element = partial_ptr.dtype.element_ty
    epoch = tl.load(epoch_ptr + row) + 1
    slot = epoch % 3
    mine = tl.load(partial_ptr + row * stride_p + cols, mask=ok, other=0.0)
    mine = tl.where(mine == 0, 0.0, mine).to(element)       # -0.0 is the sentinel: send +0.0
    for peer in tl.static_range(WORLD):
        buffer = tl.load(buffer_ptrs + peer).to(tl.pointer_type(element))
        tl.store(buffer + ((slot * WORLD + RANK) * MAX_ROWS + row) * N + cols, mine, mask=ok)
    local = tl.load(buffer_ptrs + RANK).to(tl.pointer_type(element))
    total = tl.zeros([BLOCK], tl.float32)
    for peer in tl.static_range(WORLD):       # rank order: every rank sums to the same bits
        where = local + ((slot * WORLD + peer) * MAX_ROWS + row) * N + cols
        value = tl.load(where, mask=ok, other=0.0, volatile=True)
        waiting = tl.sum((value.to(tl.int16, bitcast=True) == SENTINEL_BITS).to(tl.int32), 0)
        while waiting > 0:
            value = tl.load(where, mask=ok, other=0.0, volatile=True)
            waiting = tl.sum((value.to(tl.int16, bitcast=True) == SENTINEL_BITS).to(tl.int32),
                             0)
        total += value.to(tl.float32)
    # the slot of the epoch before is read by all and written by none now: clear it for the
    # epoch after next (the next kernel, in stream order, only starts once these stores land)
    stale = (epoch + 2) % 3
    for peer in tl.static_range(WORLD):
        tl.store(local + ((stale * WORLD + peer) * MAX_ROWS + row) * N + cols,
                 tl.full([BLOCK], SENTINEL_BITS, tl.int16).to(element, bitcast=True), mask=ok)
    tl.store(epoch_ptr + row, epoch)
    # as NCCL would hand it over (rounded to the activation type), then as the norm kernel does
    x = total.to(element).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
    store_residual_and_norm(x, weight_ptr, out_ptr + row * stride_o,
                            residual_out_ptr + row * stride_ro, cols, ok, eps, N)


class AllReduceNorm:
    """The symmetric buffers of the fused kernel, for rows up to max_rows of `hidden`
    features. Creating one is a collective (every rank, same arguments)."""

    def __init__(self, group_name: str, rank: int, world: int, hidden: int,
                 dtype: torch.dtype, device, max_rows: int = 64):
        import torch.distributed._symmetric_memory as symm_mem

        self.rank, self.world, self.hidden, self.dtype = rank, world, hidden, dtype
        self.max_rows = max_rows
        self.buffer = symm_mem.empty(SLOTS, world, max_rows, hidden, dtype=dtype, device=device)
        self.buffer.fill_(-0.0)
        torch.cuda.synchronize(device)
        self.buffer_ptrs = _pointer_table(symm_mem.rendezvous(self.buffer, group_name), device)
        self.epochs = torch.zeros(max_rows, dtype=torch.int64, device=device)
        torch.distributed.barrier()          # no rank writes to a peer before its buffer is clear

    def fits(self, x: torch.Tensor) -> bool:
        return (x.dim() == 2 and 0 < x.shape[0] <= self.max_rows and x.shape[1] == self.hidden
                and x.dtype == self.dtype and x.stride(1) == 1)

    def __call__(self, partial: torch.Tensor, residual: torch.Tensor | None,
                 weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(sum over ranks of partial + residual), sum + residual)."""
        rows, n = partial.shape
        out = torch.empty_like(partial)
        residual_out = torch.empty_like(partial)
        _allreduce_add_norm_kernel[(rows,)](
            partial, residual if residual is not None else partial, weight, out, residual_out,
            self.buffer_ptrs, self.epochs, eps, partial.stride(0),
            residual.stride(0) if residual is not None else 0, out.stride(0),
            residual_out.stride(0), RANK=self.rank, WORLD=self.world, MAX_ROWS=self.max_rows,
            N=n, BLOCK=triton.next_power_of_2(n), HAS_RESIDUAL=residual is not None,
            num_warps=8 if n >= 2048 else 4, **pdl_launch(partial.device, rows))
        return out, residual_out


def reference(partial: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel computes, with NCCL: the sum over ranks in float32 (NCCL's own bf16 sum
    rounds after every hop, which the kernel does not), then add and norm as the kernel does."""
    import torch.distributed as dist

    reduced = partial.float()
    dist.all_reduce(reduced)
    summed = reduced.to(partial.dtype)
    if residual is not None:
        summed = (summed.float() + residual.float()).to(partial.dtype)
    h = summed.float()
    normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(partial.dtype)
    return weight * normed, summed


def _pointer_table(handle, device) -> torch.Tensor:
    """Every rank's base address of a symmetric buffer, as a device int64 array."""
    return torch.tensor([int(p) for p in handle.buffer_ptrs], dtype=torch.int64, device=device)
