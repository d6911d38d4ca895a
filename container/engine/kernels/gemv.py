"""Matrix-vector product for batch-1 decode (Triton): y = W x for one token.

At batch 1 every projection is a GEMV that must stream its whole weight once. Inside the decode
graph on an H200, with each layer's weight read cold in turn, these kernels beat cuBLAS's
batch-1 choices on every projection of an 8B Llama (QKV 14.2 vs 15.5 us, attention output
10.7 vs 12.4, gate/up 55.1 vs 56.0, down 29.8 vs 32.0, LM head 235 vs 246:
bench/results/decode_profile_h200.json), partly because cuBLAS splits K on the narrow ones and
adds a reduction kernel. Each program owns a few output rows and streams their full width.
Launch shapes are tuned per weight shape on first use (Triton's autotuner; cold-L2 timing).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lora import lora_delta
from .pdl import pdl_launch, pdl_prologue

CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
           for n, k, w, s in ((4, 1024, 4, 4), (8, 512, 4, 4), (8, 1024, 8, 3),
                              (16, 512, 8, 3), (16, 256, 4, 4), (32, 256, 8, 3))]


@triton.jit
def _row_dots(x_ptr, w_ptr, rows, row_ok, K, stride_w, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """W[rows] . x in float32: the rows stream their full width."""
    # The weights never depend on the kernel before: the first tile streams in while that
    # kernel finishes (programmatic dependent launch); x is read only after it has.
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < K
    w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    pdl_prologue(PDL)
    x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
    for start in range(BLOCK_K, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    return tl.sum(acc, 1)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, N, K, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = _row_dots(x_ptr, w_ptr, rows, row_ok, K, stride_w, BLOCK_N, BLOCK_K, PDL)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _gemv_lora_kernel(x_ptr, w_ptr, out_ptr, N, K, stride_w, h_ptr, b_ptr, slot_ptr, R,
                      end0, end1, PARTS, stride_hs, stride_bl, stride_br,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    """_gemv_kernel plus the token's LoRA in the epilogue: y += B[slot] h_piece, h the
    shrink's partial sums (kernels/lora.py). A block of rows lies inside one piece (the
    caller checks that the pieces' ends are multiples of every BLOCK_N), so the piece's ranks
    are summed once per program, in the shrink's fixed order."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = _row_dots(x_ptr, w_ptr, rows, row_ok, K, stride_w, BLOCK_N, BLOCK_K, PDL)
    slot = tl.load(slot_ptr)
    if slot >= 0:
        y += lora_delta(h_ptr, b_ptr, slot, tl.program_id(0) * BLOCK_N, rows, row_ok, end0,
                        end1, R, PARTS, stride_hs, stride_bl, stride_br, BLOCK_R, BLOCK_S)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _gemv_fp8_kernel(x_ptr, w_ptr, scale_ptr, out_ptr, N, K, stride_w,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """_gemv_kernel over an FP8 weight (one byte a weight: half the bytes to stream), each
    row's float32 scale applied once to its dot product."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < K
    w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    pdl_prologue(PDL)
    x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
    for start in range(BLOCK_K, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(out_ptr + rows, (tl.sum(acc, 1) * scale).to(out_ptr.dtype.element_ty),
             mask=row_ok)


# FP8 rows are half as wide in bytes: the same tile bytes hold twice the columns.
FP8_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
               for n, k, w, s in ((4, 2048, 4, 4), (8, 1024, 4, 4), (8, 2048, 8, 3),
                                  (16, 1024, 8, 3), (16, 512, 4, 4), (32, 512, 8, 3))]

_gemv_tuned = triton.autotune(configs=CONFIGS, key=["N", "K"])(_gemv_kernel)
_gemv_lora_tuned = triton.autotune(configs=CONFIGS, key=["N", "K"])(_gemv_lora_kernel)
_gemv_fp8_tuned = triton.autotune(configs=FP8_CONFIGS, key=["N", "K"])(_gemv_fp8_kernel)
FIXED = {"BLOCK_N": 8, "BLOCK_K": 512}          # Triton's interpreter (CPU tests): no timing
# what a LoRA epilogue's pieces must align to: every BLOCK_N a launch may pick
LORA_PIECE_ALIGN = max([c.kwargs["BLOCK_N"] for c in CONFIGS] + [FIXED["BLOCK_N"]])


def _launch(kernel, tuned, args, n: int, device, **constants) -> None:
    if device.type == "cuda":
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)
        tuned[grid](*args, **constants, **pdl_launch(device, 1))
    else:
        kernel[(triton.cdiv(n, FIXED["BLOCK_N"]),)](*args, **constants, **FIXED, PDL=False)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [1, K] (contiguous) @ weight[N, K]^T -> [1, N]."""
    n, k = weight.shape
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _launch(_gemv_kernel, _gemv_tuned, (x, weight, out, n, k, weight.stride(0)), n, x.device)
    return out


def gemv_lora(x: torch.Tensor, weight: torch.Tensor, h: torch.Tensor, b: torch.Tensor,
              slot: torch.Tensor, piece_ends: list[int]) -> torch.Tensor:
    """gemv(x, weight) + B[slot] h for the one token, in one launch.

    h: lora_shrink's partial sums [S, 1, P*R]; b [L, R, N]; slot: [1] int64 (-1: no adapter);
    piece_ends: where pieces 0 and 1 end along N (N where there are fewer pieces), each a
    multiple of LORA_PIECE_ALIGN."""
    n, k = weight.shape
    rank = b.shape[1]
    assert b.stride(2) == 1 and h.stride(2) == 1
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _launch(_gemv_lora_kernel, _gemv_lora_tuned,
            (x, weight, out, n, k, weight.stride(0), h, b, slot, rank, piece_ends[0],
             piece_ends[1], h.shape[0], h.stride(0), b.stride(0), b.stride(1)), n, x.device,
            BLOCK_R=max(triton.next_power_of_2(rank), 16),
            BLOCK_S=triton.next_power_of_2(h.shape[0]))
    return out


def gemv_fp8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [1, K] (contiguous) @ (weight [N, K] fp8 * scale [N])^T -> [1, N] in x's type."""
    n, k = weight.shape
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _launch(_gemv_fp8_kernel, _gemv_fp8_tuned,
            (x, weight, scale, out, n, k, weight.stride(0)), n, x.device)
    return out
