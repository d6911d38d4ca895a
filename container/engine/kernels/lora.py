"""Batched LoRA for the GPU: shrink and expand over each token row's adapter slot, every
adapter of the step in one launch (the BGMV shape of punica's kernels; written here from the
contract, y[t] += B[s_t] (A[s_t] x[t]), not from their code).

shrink: h [T, R] = x [T, K] @ A[slot]^T, A [L, R, K] stacked slots (R = max rank, zero-padded).
expand: y [T, off:off+N] += h [T, R] @ B[slot]^T, B [L, N, R].
Rows with slot -1 (the base model) are skipped by both, so a step needs no grouping on the
host and no sync: the slot vector is an ordinary device tensor (CUDA-graph friendly).

Status: checked on CPU under Triton's interpreter (tests/test_lora_kernels.py); LoRALinear
uses them on a GPU, but not yet inside the decode CUDA graphs (LoRA steps run eagerly), and
they have not been run or measured on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slots_ptr, h_ptr, K, R, stride_x, stride_al, stride_ar,
                   stride_h, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        ranks = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + slot * stride_al + ranks[:, None] * stride_ar + cols[None, :],
                        mask=(ranks[:, None] < R) & (cols[None, :] < K), other=0.0)
            acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
        tl.store(h_ptr + row * stride_h + ranks, acc, mask=ranks < R)


@triton.jit
def _expand_kernel(h_ptr, b_ptr, slots_ptr, y_ptr, N, R, offset, stride_h, stride_bl,
                   stride_bn, stride_y, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    block = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        ranks = tl.arange(0, BLOCK_R)
        outs = block * BLOCK_N + tl.arange(0, BLOCK_N)
        h = tl.load(h_ptr + row * stride_h + ranks, mask=ranks < R, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + slot * stride_bl + outs[:, None] * stride_bn + ranks[None, :],
                    mask=(outs[:, None] < N) & (ranks[None, :] < R), other=0.0)
        delta = tl.sum(b.to(tl.float32) * h[None, :], axis=1)
        where = y_ptr + row * stride_y + offset + outs
        y = tl.load(where, mask=outs < N, other=0.0)
        tl.store(where, (y.to(tl.float32) + delta).to(y.dtype), mask=outs < N)


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """h [T, R] (float32) for x [T, K], a [L, R, K], slots [T] (int64, -1: none)."""
    tokens, k = x.shape
    rank = a.shape[1]
    h = torch.zeros(tokens, rank, dtype=torch.float32, device=x.device)
    if tokens:
        _shrink_kernel[(tokens,)](x, a, slots, h, k, rank, x.stride(0), a.stride(0),
                                  a.stride(1), h.stride(0),
                                  BLOCK_R=max(triton.next_power_of_2(rank), 16),
                                  BLOCK_K=min(triton.next_power_of_2(k), 128))
    return h


def lora_expand(h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, y: torch.Tensor,
                offset: int = 0) -> torch.Tensor:
    """y[:, offset:offset+N] += h @ b[slot]^T per row, in place; b [L, N, R]."""
    tokens, n, rank = h.shape[0], b.shape[1], b.shape[2]
    if tokens:
        block_n = min(triton.next_power_of_2(n), 64)
        _expand_kernel[(tokens, triton.cdiv(n, block_n))](
            h, b, slots, y, n, rank, offset, h.stride(0), b.stride(0), b.stride(1), y.stride(0),
            BLOCK_R=max(triton.next_power_of_2(rank), 16), BLOCK_N=block_n)
    return y
