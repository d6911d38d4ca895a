"""Batched LoRA for the GPU: y[t] += B[s_t] (A[s_t] x[t]) for each token row's adapter slot s_t,
every adapter of the step at once (written here from that contract, not from punica's code).

Layouts (layers/lora.py owns the storage): a layer's pieces (q/k/v, gate/up) share one A
tensor [P, L, R, K] (piece, slot, rank, input) and one B tensor [L, R, N] (slot, rank, output),
the pieces' outputs side by side along N. Rows with slot -1 (the base model) get nothing.

Two paths, chosen by the number of token rows (decided in Python, so each decode CUDA graph
holds one of them):
- few rows (decode at small batch): per-row Triton kernels, the BGMV shape. shrink writes
  h [S, T, P*R], partial sums over S slices of K (at batch 1 one program per row would leave
  the GPU idle, so K is cut into slices, summed in a fixed order by expand: deterministic);
  expand adds h[piece ranks] @ B[slot] to each output block, reading the piece of a block from
  the pieces' ends (blocks never straddle pieces). Both launch with programmatic dependent
  launch at one row (pdl.py), so they do not break the chain of the base model's kernels.
- many rows (large decode batches, prefill): two dense cuBLAS products over every resident
  slot, h = x @ A^T for all slots, masked by each row's one-hot slot, then y += h @ B. A slot
  is read once per step instead of once per row, on tensor cores: at 500 rows of an 8B model
  over 8 adapters the per-row kernels cost more than the base model's own step.
- one row whose base product is our Triton GEMV (batch-1 decode): the shrink, then the GEMV
  with the expand as its epilogue (kernels/gemv.py), one launch fewer per layer. At batch 1
  the LoRA kernels cost launches, not bytes (an 8B model's rank-16 adapter is 84 MB, ~28 us
  of reading a step), so the launch saved is the step time won.
The slot vector and the one-hot mask are ordinary device tensors, so a step needs no grouping
on the host and no sync, and the decode graphs capture either path (cuda_graphs.py fills both
buffers before each replay).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, pdl_prologue

K_SLICE = 256          # columns of x per shrink program when rows alone are too few programs
FEW_ROWS = 64
DENSE_MIN_ROWS = 32    # from this many token rows on, the dense path (see the module docstring)


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slots_ptr, h_ptr, K, R, PR, stride_x, stride_ap, stride_al,
                   stride_ar, stride_hs, stride_h, K_PER_PROGRAM: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0)
    part = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        ranks = tl.arange(0, BLOCK_R)                 # every piece's ranks, piece-major
        where_a = a_ptr + (ranks // R) * stride_ap + slot * stride_al + (ranks % R) * stride_ar
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        first = part * K_PER_PROGRAM
        for start in range(0, K_PER_PROGRAM, BLOCK_K):
            cols = first + start + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
            a = tl.load(where_a[:, None] + cols[None, :],
                        mask=(ranks[:, None] < PR) & (cols[None, :] < K), other=0.0)
            acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
        tl.store(h_ptr + part * stride_hs + row * stride_h + ranks, acc, mask=ranks < PR)


@triton.jit
def lora_delta(h_row_ptr, b_ptr, slot, first, outs, out_ok, end0, end1, R, PARTS, stride_hs,
               stride_bl, stride_br, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    """B[slot][:, outs] . h_piece in float32 for one row: the piece is the one holding output
    `first` (blocks never straddle pieces), its ranks summed over the shrink's S partial sums
    in one load (one L2 round trip), in a fixed order. Shared by expand and the GEMV's
    LoRA epilogue (kernels/gemv.py)."""
    piece = (first >= end0).to(tl.int32) + (first >= end1).to(tl.int32)
    ranks = tl.arange(0, BLOCK_R)
    parts = tl.arange(0, BLOCK_S)
    h = tl.sum(tl.load(h_row_ptr + parts[:, None] * stride_hs + piece * R + ranks[None, :],
                       mask=(parts[:, None] < PARTS) & (ranks[None, :] < R), other=0.0), 0)
    b = tl.load(b_ptr + slot * stride_bl + ranks[None, :] * stride_br + outs[:, None],
                mask=out_ok[:, None] & (ranks[None, :] < R), other=0.0)
    return tl.sum(b.to(tl.float32) * h[None, :], axis=1)


@triton.jit
def _expand_kernel(h_ptr, b_ptr, slots_ptr, y_ptr, N, R, offset, end0, end1, PARTS,
                   stride_hs, stride_h, stride_bl, stride_br, stride_y, BLOCK_R: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0)
    block = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        first = block * BLOCK_N
        outs = first + tl.arange(0, BLOCK_N)
        delta = lora_delta(h_ptr + row * stride_h, b_ptr, slot, first, outs, outs < N, end0,
                           end1, R, PARTS, stride_hs, stride_bl, stride_br, BLOCK_R, BLOCK_S)
        where = y_ptr + row * stride_y + offset + outs
        y = tl.load(where, mask=outs < N, other=0.0)
        tl.store(where, (y.to(tl.float32) + delta).to(y.dtype), mask=outs < N)


def _pieces(a: torch.Tensor) -> torch.Tensor:
    """A as [P, L, R, K] (a single piece may come as [L, R, K])."""
    return a.unsqueeze(0) if a.dim() == 3 else a


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """h [S, T, P*R] (float32 partial sums over S slices of K) for x [T, K], a [P, L, R, K],
    slots [T] (int64, -1: none). Rows of slot -1 are left unwritten."""
    a = _pieces(a)
    tokens, k = x.shape
    pieces, rank = a.shape[0], a.shape[2]
    per_program = K_SLICE if tokens < FEW_ROWS and k > K_SLICE else triton.next_power_of_2(k)
    parts = triton.cdiv(k, per_program)
    h = torch.empty(parts, tokens, pieces * rank, dtype=torch.float32, device=x.device)
    if tokens:
        assert a.stride(3) == 1 and x.stride(1) == 1
        _shrink_kernel[(tokens, parts)](x, a, slots, h, k, rank, pieces * rank, x.stride(0),
                                        a.stride(0), a.stride(1), a.stride(2), h.stride(0),
                                        h.stride(1), K_PER_PROGRAM=per_program,
                                        BLOCK_R=max(triton.next_power_of_2(pieces * rank), 16),
                                        BLOCK_K=min(per_program, 128),
                                        **pdl_launch(x.device, tokens))
    return h


def lora_expand(h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, y: torch.Tensor,
                offset: int = 0, piece_rows: list[int] | None = None) -> torch.Tensor:
    """y[:, offset:offset+N] += h_p @ b[slot] per row, in place; b [L, R, N].

    h: lora_shrink's [S, T, P*R] (or [T, P*R]); piece_rows: the output columns of each of the
    P pieces (default one piece of N); piece p reads h's ranks p*R..(p+1)*R."""
    if h.dim() == 2:
        h = h.unsqueeze(0)
    tokens, rank, n = h.shape[1], b.shape[1], b.shape[2]
    piece_rows = piece_rows or [n]
    if sum(piece_rows) != n:
        raise ValueError(f"lora_expand: pieces {piece_rows} must sum to {n}")
    ends = piece_ends(piece_rows)
    # output blocks must not straddle pieces: the largest power of two dividing every end
    block_n = 64
    for end in ends:
        if end < n:
            block_n = min(block_n, end & -end)
    if tokens:
        assert b.stride(2) == 1 and y.stride(1) == 1
        _expand_kernel[(tokens, triton.cdiv(n, block_n))](
            h, b, slots, y, n, rank, offset, ends[0], ends[1], h.shape[0], h.stride(0),
            h.stride(1), b.stride(0), b.stride(1), y.stride(0),
            BLOCK_R=max(triton.next_power_of_2(rank), 16), BLOCK_N=block_n,
            BLOCK_S=triton.next_power_of_2(h.shape[0]), **pdl_launch(y.device, tokens))
    return y


def piece_ends(piece_rows: list[int]) -> list[int]:
    """Where pieces 0 and 1 end along the output (the output's width where there are fewer)."""
    if not 1 <= len(piece_rows) <= 3:
        raise ValueError(f"LoRA kernels: {len(piece_rows)} pieces, 1 to 3 are supported")
    ends = list(itertools.accumulate(piece_rows))[:-1]
    return ends + [sum(piece_rows)] * (2 - len(ends))


def gemv_lora_fits(piece_rows: list[int]) -> bool:
    """Whether the GEMV's LoRA epilogue can serve these pieces: no block of rows may straddle
    two of them."""
    from .gemv import LORA_PIECE_ALIGN

    return len(piece_rows) <= 3 and all(end % LORA_PIECE_ALIGN == 0
                                        for end in piece_ends(piece_rows))


def lora_gemv(x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              slots: torch.Tensor, piece_rows: list[int]) -> torch.Tensor:
    """One token: x @ weight^T + B[slot] (A[slot] x), the expand inside the GEMV's epilogue
    (pieces as gemv_lora_fits allows)."""
    from .gemv import gemv_lora

    x = x.contiguous()
    h = lora_shrink(x, a, slots)
    return gemv_lora(x, weight, h, b, slots, piece_ends(piece_rows))


def lora_dense(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
               y: torch.Tensor, piece_rows: list[int]) -> torch.Tensor:
    """The many-rows path: y[:, piece p] += ((x @ A_p^T) * mask) @ B[:, :, piece p] over all
    L slots at once, in place. a [P, L, R, K] (contiguous), b [L, R, N], mask [T, L] (one-hot
    of each row's slot in the model's dtype, all zeros for the base model)."""
    a = _pieces(a)
    pieces, slots, rank, k = a.shape
    tokens = x.shape[0]
    h = (x.to(a.dtype) @ a.reshape(pieces * slots * rank, k).t()).view(tokens, pieces, slots,
                                                                       rank)
    h.mul_(mask.view(tokens, 1, slots, 1))
    flat_b = b.reshape(slots * rank, b.shape[2])
    start = 0
    for piece, count in enumerate(piece_rows):
        rows, cols = h[:, piece].reshape(tokens, slots * rank), flat_b[:, start:start + count]
        target = y[:, start:start + count]
        if y.dtype == b.dtype:
            target.addmm_(rows, cols)          # in place, cuBLAS writing into y's columns
        else:
            target.add_((rows @ cols).to(y.dtype))
        start += count
    return y
