"""Batched LoRA for the GPU: shrink and expand over each token row's adapter slot, every
adapter of the step in one launch (the BGMV shape of punica's kernels; written here from the
contract, y[t] += B[s_t] (A[s_t] x[t]), not from their code).

A layer's pieces (q/k/v, gate/up) share one launch of each: their A matrices are stacked
along the rank, A [L, P*R, K], and their B matrices along the output, B [L, N, R].
shrink: h [S, T, P*R] = partial sums of x [T, K] @ A[slot]^T over S slices of K (a row's
  shrink is a long dot product: at batch 1 one program per row would leave the GPU idle, so
  K is cut into slices and the expand adds them up, in a fixed order: deterministic).
expand: y [T, off:off+N] += h[:, piece ranks] @ B[slot]^T, the piece of each output block
  read from the pieces' ends (output blocks never straddle two pieces).
Rows with slot -1 (the base model) are skipped by both, so a step needs no grouping on the
host and no sync: the slot vector is an ordinary device tensor, and the decode CUDA graphs
capture both kernels (cuda_graphs.py fills the slots buffer before each replay).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

K_SLICE = 512          # columns of x per shrink program when rows alone are too few programs
FEW_ROWS = 64


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slots_ptr, h_ptr, K, R, stride_x, stride_al, stride_ar,
                   stride_hs, stride_h, K_PER_PROGRAM: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        ranks = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        first = part * K_PER_PROGRAM
        for start in range(0, K_PER_PROGRAM, BLOCK_K):
            cols = first + start + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + slot * stride_al + ranks[:, None] * stride_ar + cols[None, :],
                        mask=(ranks[:, None] < R) & (cols[None, :] < K), other=0.0)
            acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
        tl.store(h_ptr + part * stride_hs + row * stride_h + ranks, acc, mask=ranks < R)


@triton.jit
def _expand_kernel(h_ptr, b_ptr, slots_ptr, y_ptr, N, R, offset, end0, end1, PARTS,
                   stride_hs, stride_h, stride_bl, stride_bn, stride_y, BLOCK_R: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    block = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        first = block * BLOCK_N
        piece = (first >= end0).to(tl.int32) + (first >= end1).to(tl.int32)
        ranks = tl.arange(0, BLOCK_R)
        where_h = h_ptr + row * stride_h + piece * R + ranks
        h = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for part in range(0, PARTS):
            h += tl.load(where_h + part * stride_hs, mask=ranks < R, other=0.0)
        outs = first + tl.arange(0, BLOCK_N)
        b = tl.load(b_ptr + slot * stride_bl + outs[:, None] * stride_bn + ranks[None, :],
                    mask=(outs[:, None] < N) & (ranks[None, :] < R), other=0.0)
        delta = tl.sum(b.to(tl.float32) * h[None, :], axis=1)
        where = y_ptr + row * stride_y + offset + outs
        y = tl.load(where, mask=outs < N, other=0.0)
        tl.store(where, (y.to(tl.float32) + delta).to(y.dtype), mask=outs < N)


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """h [S, T, R] (float32 partial sums over S slices of K) for x [T, K], a [L, R, K],
    slots [T] (int64, -1: none). Rows of slot -1 are left unwritten."""
    tokens, k = x.shape
    rank = a.shape[1]
    per_program = K_SLICE if tokens < FEW_ROWS and k > K_SLICE else triton.next_power_of_2(k)
    parts = triton.cdiv(k, per_program)
    h = torch.empty(parts, tokens, rank, dtype=torch.float32, device=x.device)
    if tokens:
        block_k = min(per_program, 128)
        _shrink_kernel[(tokens, parts)](x, a, slots, h, k, rank, x.stride(0), a.stride(0),
                                        a.stride(1), h.stride(0), h.stride(1),
                                        K_PER_PROGRAM=per_program,
                                        BLOCK_R=max(triton.next_power_of_2(rank), 16),
                                        BLOCK_K=block_k)
    return h


def lora_expand(h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, y: torch.Tensor,
                offset: int = 0, piece_rows: list[int] | None = None) -> torch.Tensor:
    """y[:, offset:offset+N] += h_p @ b[slot]^T per row, in place; b [L, N, R].

    h: lora_shrink's [S, T, P*R] (or [T, P*R]); piece_rows: the output rows of each of the P
    pieces (default one piece of N rows); piece p reads h's ranks p*R..(p+1)*R."""
    if h.dim() == 2:
        h = h.unsqueeze(0)
    tokens, n, rank = h.shape[1], b.shape[1], b.shape[2]
    piece_rows = piece_rows or [n]
    if len(piece_rows) > 3 or sum(piece_rows) != n:
        raise ValueError(f"lora_expand: pieces {piece_rows} must be 1 to 3 and sum to {n}")
    ends = list(itertools.accumulate(piece_rows))[:-1]
    ends += [n] * (2 - len(ends))
    # output blocks must not straddle pieces: the largest power of two dividing every end
    block_n = 64
    for end in ends:
        if end < n:
            block_n = min(block_n, end & -end)
    if tokens:
        _expand_kernel[(tokens, triton.cdiv(n, block_n))](
            h, b, slots, y, n, rank, offset, ends[0], ends[1], h.shape[0], h.stride(0),
            h.stride(1), b.stride(0), b.stride(1), y.stride(0),
            BLOCK_R=max(triton.next_power_of_2(rank), 16), BLOCK_N=block_n)
    return y
