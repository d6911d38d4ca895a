"""LoRA on any of our linear layers: y = base(x) + B_s (A_s x) for each row's adapter slot s.

One `LoRALinear` wraps a built and loaded linear layer (column-, row-parallel, merged or qkv)
and holds, per piece of its output (q/k/v, gate/up, or the whole layer), the stacked matrices of
every device slot: A [pieces, max_loras, max_rank, in_local] and B [max_loras, max_rank,
out_local] (the pieces side by side along the output), zero-padded to max_rank, the adapter's
scaling folded into B: the layouts both GPU paths of kernels/lora.py read. Which slot each token row uses is
not decided here: the runner writes it once per step into the shared `LoRAContext` (from the
step plan), and every layer reads it, so model code has no adapter branches at all.

Tensor parallelism: a column-parallel layer keeps A whole and its rows of B (as its weight);
a row-parallel layer keeps its columns of A and B whole, its partial product summed by the
layer's own all-reduce (the shrink of a sum is the sum of the shrinks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..kernels import gpu_kernels
from .linear import (ColumnParallelLinear, LinearBase, MergedColumnParallelLinear,
                     QKVParallelLinear, RowParallelLinear)

BASE = -1      # the slot index of rows that use no adapter


class LoRAContext:
    """The step's adapter choice, shared by every LoRA layer of a model.

    token_slots: each token row's slot (device); token_mask: the same as a one-hot [rows,
    max_loras] in the adapters' dtype, for the dense GPU path (kernels/lora.py); groups:
    (slot, row indices) for each slot present in the step, computed once per step so the plain
    PyTorch path is one gather-shrink-expand-scatter per slot and layer."""

    def __init__(self, max_loras: int = 1, dtype: torch.dtype = torch.float32):
        self.max_loras = max_loras
        self.dtype = dtype
        self.groups: list[tuple[int, torch.Tensor]] = []
        self.token_slots: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None
        self.capturing = False

    @property
    def active(self) -> bool:
        """Whether LoRA layers add anything this step. While a CUDA graph is recorded they
        always do: the graph is replayed for steps with and without adapters alike."""
        return self.capturing or bool(self.groups)

    def one_hot(self, token_slots: np.ndarray) -> np.ndarray:
        """The mask the dense path multiplies by: row t, column s is 1 where row t uses slot s."""
        mask = np.zeros((token_slots.shape[0], self.max_loras), dtype=np.float32)
        used = token_slots >= 0
        mask[np.flatnonzero(used), token_slots[used]] = 1.0
        return mask

    def capture_with(self, slots: torch.Tensor | None, mask: torch.Tensor | None = None) -> None:
        """Record graphs that read each row's slot from `slots` and its one-hot from `mask`
        (fixed device buffers the graph runner fills before every replay); None ends it."""
        self.set(None)
        self.capturing = slots is not None
        self.token_slots = slots
        self.token_mask = mask

    def set(self, token_slots: torch.Tensor | None, device: torch.device | None = None) -> None:
        """token_slots: a host tensor, one slot per token row (BASE: no adapter)."""
        self.capturing = False
        self.token_slots = None
        self.token_mask = None
        self.groups = []
        if token_slots is None or token_slots.numel() == 0:
            return
        host = token_slots.cpu()
        device = device or host.device
        self.token_slots = host.to(device)
        self.token_mask = torch.from_numpy(self.one_hot(host.numpy())).to(device, self.dtype)
        for slot in torch.unique(host).tolist():
            if slot == BASE:
                continue
            rows = torch.nonzero(host == slot).flatten()
            whole = rows.numel() == host.numel()
            self.groups.append((slot, None if whole else rows.to(device)))

    def clear(self) -> None:
        self.set(None)


@dataclass
class Piece:
    """One LoRA target inside a linear layer's output: where its rows sit locally, and which
    rows of the full (checkpoint) B matrix this rank keeps."""
    name: str             # the checkpoint module name (q_proj, gate_proj, o_proj, ...)
    out_offset: int       # first local output row
    out_count: int        # local output rows
    full_out: int         # rows of the whole matrix (the checkpoint's B)
    b_start: int          # first row of the checkpoint's B this rank keeps


def pieces_of(base: nn.Module, names: list[str]) -> list[Piece]:
    """The LoRA pieces of a linear layer; names: its checkpoint module names in output order."""
    if isinstance(base, QKVParallelLinear):
        q_start, q_count = base.q_rows
        kv_start, kv_count = base.kv_rows
        return [Piece(names[0], 0, q_count, base.full_q, q_start),
                Piece(names[1], q_count, kv_count, base.full_kv, kv_start),
                Piece(names[2], q_count + kv_count, kv_count, base.full_kv, kv_start)]
    if isinstance(base, MergedColumnParallelLinear):
        return [Piece(name, offset, count, full, start) for name, offset, (start, count), full
                in zip(names, base.offsets, base.pieces, base.out_features)]
    if isinstance(base, ColumnParallelLinear):
        return [Piece(names[0], 0, base.local_out, base.out_features, base.start)]
    if isinstance(base, RowParallelLinear):
        out = base.weight.shape[0]
        return [Piece(names[0], 0, out, out, 0)]
    raise TypeError(f"LoRA does not wrap {type(base).__name__}")


def _gemv_fits(piece_rows: list[int]) -> bool:
    try:
        from ..kernels.lora import gemv_lora_fits
    except ImportError:                 # no Triton: the PyTorch path only
        return False
    return gemv_lora_fits(piece_rows)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, names: list[str], context: LoRAContext,
                 max_loras: int, max_rank: int, dtype: torch.dtype):
        super().__init__()
        self.base = base
        self.context = context
        self.row_parallel = isinstance(base, RowParallelLinear)
        self.pieces = pieces_of(base, names)
        self.in_local = base.weight.shape[1]
        self.in_full = base.in_features if self.row_parallel else self.in_local
        device = base.weight.device
        self.max_rank = max_rank
        out_local = sum(p.out_count for p in self.pieces)
        if [p.out_offset for p in self.pieces] != [sum(q.out_count for q in self.pieces[:i])
                                                  for i in range(len(self.pieces))]:
            raise ValueError("LoRA pieces must tile the layer's output in order")
        # one A and one B tensor for all pieces, so the GPU path is one shrink and one expand
        # per layer (kernels/lora.py); lora_a / lora_b are each piece's views of them
        self.a_all = torch.zeros(len(self.pieces), max_loras, max_rank, self.in_local,
                                 dtype=dtype, device=device)
        self.b_all = torch.zeros(max_loras, max_rank, out_local, dtype=dtype, device=device)
        self.lora_a = [self.a_all[i] for i in range(len(self.pieces))]
        self.lora_b = [self.b_all[:, :, p.out_offset:p.out_offset + p.out_count]
                       for p in self.pieces]
        self.piece_rows = [p.out_count for p in self.pieces]
        # which pieces each slot fills: a slot that does not target this layer costs nothing
        self.filled: list[set[int]] = [set() for _ in range(max_loras)]
        # one token on a GPU: the base GEMV can add the LoRA itself (kernels/lora.py), when
        # the base product is the plain one (not FP8's) and the pieces align to its blocks
        self.gemv_epilogue = type(base).matmul is LinearBase.matmul and _gemv_fits(self.piece_rows)

    # loading ----------------------------------------------------------------------------------
    def piece_index(self, name: str) -> int | None:
        for i, piece in enumerate(self.pieces):
            if piece.name == name:
                return i
        return None

    def local_slices(self, piece: int, a_slice, b_slice) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's A and B of one piece, read from lazy checkpoint slices (get_slice)."""
        p = self.pieces[piece]
        if self.row_parallel:
            a = a_slice[:, self.base.start:self.base.start + self.in_local]
            b = b_slice[:]
        else:
            a = a_slice[:]
            b = b_slice[p.b_start:p.b_start + p.out_count]
        return a, b

    def set_slot(self, slot: int, weights: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """weights: piece -> (A [r, in_local], B [out_local, r] with the scaling folded in)."""
        self.clear_slot(slot)
        for piece, (a, b) in weights.items():
            rank = a.shape[0]
            self.lora_a[piece][slot, :rank].copy_(a)
            self.lora_b[piece][slot, :rank].copy_(b.t())
        self.filled[slot] = set(weights)

    def clear_slot(self, slot: int) -> None:
        for piece in self.filled[slot]:
            self.lora_a[piece][slot].zero_()
            self.lora_b[piece][slot].zero_()
        self.filled[slot] = set()

    # forward ----------------------------------------------------------------------------------
    def _add_lora(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Plain PyTorch path: per slot present in the step, shrink then expand its rows.
        On a GPU: every row's slot at once, per-row kernels for few rows and two dense
        products over all slots for many (kernels/lora.py)."""
        if gpu_kernels(x) is not None and out.is_contiguous():
            from ..kernels.lora import DENSE_MIN_ROWS, lora_dense, lora_expand, lora_shrink

            if x.shape[0] >= DENSE_MIN_ROWS:
                return lora_dense(x, self.a_all, self.b_all, self.context.token_mask, out,
                                  self.piece_rows)
            slots = self.context.token_slots
            h = lora_shrink(x, self.a_all, slots)
            return lora_expand(h, self.b_all, slots, out, 0, self.piece_rows)
        for slot, rows in self.context.groups:
            filled = self.filled[slot]
            if not filled:
                continue
            xs = x if rows is None else x.index_select(0, rows)
            for piece in filled:
                p = self.pieces[piece]
                delta = (xs @ self.lora_a[piece][slot].t()) @ self.lora_b[piece][slot]
                target = out.narrow(-1, p.out_offset, p.out_count)
                if rows is None:
                    target.add_(delta.to(out.dtype))
                else:
                    target.index_add_(0, rows, delta.to(out.dtype))
        return out

    @property
    def can_defer_reduce(self) -> bool:
        return self.base.can_defer_reduce

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's product without bias or reduction, this step's LoRA added."""
        if not self.context.active:
            return self.base.matmul(x)
        if self.gemv_epilogue and x.shape[0] == 1 and gpu_kernels(x) is not None:
            from ..kernels.lora import lora_gemv

            return lora_gemv(x, self.base.weight, self.a_all, self.b_all,
                             self.context.token_slots, self.piece_rows)
        return self._add_lora(x, self.base.matmul(x))

    def forward(self, x, reduce: bool = True):
        base = self.base
        out = self._product(x)
        if self.row_parallel:
            if not reduce and base.can_defer_reduce:
                return out
            out = base.tp.all_reduce(out)
        return out if base.bias is None else out + base.bias

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)
