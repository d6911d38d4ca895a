"""Grouped expert GEMMs for mixture-of-experts layers (GPU path, Triton).

The (token, expert) pairs of a step are sorted by expert and each expert's run padded to a
whole block of rows, so every program multiplies one block of one expert's rows by that
expert's weights: all experts of a layer in one launch per projection (gate+up with the SiLU
product fused in, then down with the routing weight applied), however the tokens spread over
the experts. The sort and padding are device ops with a fixed upper bound on blocks, so a
decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, pdl_prologue


@triton.jit
def _route_kernel(logits_ptr, weights_ptr, experts_ptr, stride_l, E: tl.constexpr,
                  TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, RENORMALIZE: tl.constexpr,
                  PDL: tl.constexpr):
    """One token's routing: softmax over the experts in float32, the top k by repeated
    argmax (the first of equal scores wins), optionally rescaled to sum to one."""
    pdl_prologue(PDL)
    token = tl.program_id(0)
    ids = tl.arange(0, BLOCK_E)
    scores = tl.load(logits_ptr + token * stride_l + ids, mask=ids < E,
                     other=-float("inf")).to(tl.float32)
    probs = tl.exp(scores - tl.max(scores, 0))
    probs = probs / tl.sum(probs, 0)
    slots = tl.arange(0, TOP_K)
    chosen = tl.zeros((TOP_K,), dtype=tl.int64)
    picked = tl.zeros((TOP_K,), dtype=tl.float32)
    left = tl.where(ids < E, probs, -1.0)
    for j in range(TOP_K):
        best = tl.argmax(left, 0)
        chosen = tl.where(slots == j, best.to(tl.int64), chosen)
        picked = tl.where(slots == j, tl.max(left, 0), picked)
        left = tl.where(ids == best, -1.0, left)
    if RENORMALIZE:
        picked = picked / tl.sum(picked, 0)
    tl.store(weights_ptr + token * TOP_K + slots, picked)
    tl.store(experts_ptr + token * TOP_K + slots, chosen)


def route_top_k(router_logits: torch.Tensor, top_k: int,
                renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """layers/moe.route in one launch: (weights [T, k] float32, expert ids [T, k] int64).
    top_k must be a power of two (Triton's ranges); the caller falls back otherwise."""
    tokens, num_experts = router_logits.shape
    weights = torch.empty(tokens, top_k, dtype=torch.float32, device=router_logits.device)
    experts = torch.empty(tokens, top_k, dtype=torch.int64, device=router_logits.device)
    if tokens:
        _route_kernel[(tokens,)](router_logits, weights, experts, router_logits.stride(0),
                                 E=num_experts, TOP_K=top_k,
                                 BLOCK_E=triton.next_power_of_2(num_experts),
                                 RENORMALIZE=renormalize,
                                 **pdl_launch(router_logits.device, tokens))
    return weights, experts


@triton.jit
def _moe_gate_up_kernel(x_ptr, w_ptr, out_ptr, rows_ptr, block_expert_ptr,
                        stride_xt, stride_we, stride_wn, stride_ot,
                        TOP_K: tl.constexpr, HIDDEN: tl.constexpr, INTER: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[pair, n] = silu(x[token] . gate_e[n]) * (x[token] . up_e[n]) for a block of the
    sorted pairs of expert e (w: [E, 2 * INTER, HIDDEN], gate rows then up rows)."""
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert < 0:                      # a block past the last expert's rows
        return
    rows = tl.load(rows_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows >= 0
    tokens = tl.where(row_ok, rows // TOP_K, 0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < INTER
    weights = w_ptr + expert * stride_we
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, HIDDEN, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_ok = ks < HIDDEN
        a = tl.load(x_ptr + tokens[:, None] * stride_xt + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(weights + cols[None, :] * stride_wn + ks[:, None], mask=w_mask,
                         other=0.0)
        w_up = tl.load(weights + (cols[None, :] + INTER) * stride_wn + ks[:, None], mask=w_mask,
                       other=0.0)
        gate = tl.dot(a, w_gate, gate)
        up = tl.dot(a, w_up, up)
    activated = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + rows[:, None] * stride_ot + cols[None, :],
             activated.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _moe_down_kernel(act_ptr, w_ptr, route_ptr, out_ptr, rows_ptr, block_expert_ptr,
                     stride_at, stride_we, stride_wn, stride_ot,
                     HIDDEN: tl.constexpr, INTER: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[pair, n] = route[pair] * (act[pair] . down_e[n]) (w: [E, HIDDEN, INTER])."""
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert < 0:
        return
    rows = tl.load(rows_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows >= 0
    safe_rows = tl.where(row_ok, rows, 0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < HIDDEN
    weights = w_ptr + expert * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, INTER, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_ok = ks < INTER
        a = tl.load(act_ptr + safe_rows[:, None] * stride_at + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(weights + cols[None, :] * stride_wn + ks[:, None],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    route = tl.load(route_ptr + safe_rows, mask=row_ok, other=0.0)
    acc = acc.to(out_ptr.dtype.element_ty).to(tl.float32) * route[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _pair_gate_up_kernel(x_ptr, w_ptr, experts_ptr, out_ptr, pairs, stride_xt, stride_we,
                         stride_wn, stride_ot, TOP_K: tl.constexpr, HIDDEN: tl.constexpr,
                         INTER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The few-token path: one program per (token, slot) pair and block of INTER rows, its
    expert read straight from the routing (no sort): a GEMV over that expert's gate and up
    rows, the SiLU product fused in. As kernels/gemv.py: products accumulate per lane and
    reduce once at the end, so the loop is only loads."""
    pair = tl.program_id(0)
    token = pair // TOP_K
    expert = tl.load(experts_ptr + pair).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < INTER
    weights = w_ptr + expert * stride_we
    gate = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, HIDDEN, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < HIDDEN
        mask = row_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(weights + rows[:, None] * stride_wn + cols[None, :], mask=mask,
                         other=0.0)
        w_up = tl.load(weights + (rows[:, None] + INTER) * stride_wn + cols[None, :],
                       mask=mask, other=0.0)
        a = tl.load(x_ptr + token * stride_xt + cols, mask=col_ok, other=0.0).to(tl.float32)
        gate += w_gate.to(tl.float32) * a[None, :]
        up += w_up.to(tl.float32) * a[None, :]
    g = tl.sum(gate, 1)
    activated = g * tl.sigmoid(g) * tl.sum(up, 1)
    tl.store(out_ptr + pair * stride_ot + rows, activated.to(out_ptr.dtype.element_ty),
             mask=row_ok)


@triton.jit
def _pair_down_kernel(act_ptr, w_ptr, experts_ptr, route_ptr, out_ptr, pairs, stride_at,
                      stride_we, stride_wn, stride_ot, HIDDEN: tl.constexpr,
                      INTER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[pair, n] = route[pair] * (act[pair] . down_e[n]) for the pair's expert e."""
    pair = tl.program_id(0)
    expert = tl.load(experts_ptr + pair).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < HIDDEN
    weights = w_ptr + expert * stride_we
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, INTER, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < INTER
        w = tl.load(weights + rows[:, None] * stride_wn + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        a = tl.load(act_ptr + pair * stride_at + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * a[None, :]
    out = tl.sum(acc, 1).to(out_ptr.dtype.element_ty).to(tl.float32) * tl.load(route_ptr + pair)
    tl.store(out_ptr + pair * stride_ot + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


# Up to this many (token, expert) pairs a step reads each pair's expert directly: at batch-1
# decode the sort's dozen small launches and the grid of mostly idle blocks cost more than
# the experts' reads. Past it, tokens share experts and the sorted grouped GEMM reads each
# active expert once.
PAIR_PATH_MAX_PAIRS = 32
PAIR_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in ((4, 1024, 4, 3), (8, 512, 4, 3), (8, 1024, 8, 3),
                                   (16, 512, 8, 3), (16, 256, 4, 4), (32, 256, 8, 3))]
PAIR_FIXED = {"BLOCK_N": 8, "BLOCK_K": 128}      # Triton's interpreter (CPU tests): no timing
_pair_gate_up_tuned = triton.autotune(configs=PAIR_CONFIGS,
                                      key=["pairs", "HIDDEN", "INTER"])(_pair_gate_up_kernel)
_pair_down_tuned = triton.autotune(configs=PAIR_CONFIGS,
                                   key=["pairs", "HIDDEN", "INTER"])(_pair_down_kernel)


def _pair_launch(kernel, tuned, args, pairs: int, width: int, device, **constants) -> None:
    if device.type == "cuda":
        tuned[lambda meta: (pairs, triton.cdiv(width, meta["BLOCK_N"]))](*args, **constants)
    else:
        kernel[(pairs, triton.cdiv(width, PAIR_FIXED["BLOCK_N"]))](*args, **constants,
                                                                   **PAIR_FIXED)


def pair_experts(x, w13, w2, route_weights, experts):
    """The few-token path of grouped_experts (same arguments and result)."""
    tokens, hidden = x.shape
    inter = w13.shape[1] // 2
    top_k = experts.shape[1]
    pairs = tokens * top_k
    x = x.contiguous()
    flat_experts = experts.reshape(-1).contiguous()
    activated = torch.empty(pairs, inter, dtype=x.dtype, device=x.device)
    _pair_launch(_pair_gate_up_kernel, _pair_gate_up_tuned,
                 (x, w13, flat_experts, activated, pairs, x.stride(0), w13.stride(0),
                  w13.stride(1), activated.stride(0)), pairs, inter, x.device,
                 TOP_K=top_k, HIDDEN=hidden, INTER=inter)
    per_pair = torch.empty(pairs, hidden, dtype=x.dtype, device=x.device)
    route = route_weights.reshape(-1).to(torch.float32).contiguous()
    _pair_launch(_pair_down_kernel, _pair_down_tuned,
                 (activated, w2, flat_experts, route, per_pair, pairs, activated.stride(0),
                  w2.stride(0), w2.stride(1), per_pair.stride(0)), pairs, hidden, x.device,
                 HIDDEN=hidden, INTER=inter)
    return per_pair.view(tokens, top_k, hidden).sum(dim=1)


def sort_by_expert(experts: torch.Tensor, num_experts: int, block_m: int):
    """(rows [blocks * block_m]: pair index t * k + slot, -1 for padding; block_expert
    [blocks]: the expert of each block, -1 past the end). blocks is a bound fixed by the
    shapes (pairs / block_m + experts), so nothing waits on the device."""
    flat = experts.flatten()
    pairs = flat.numel()
    order = torch.argsort(flat, stable=True)
    # scatter_add, not bincount: bincount reads its maximum back to the host (no graph capture)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    sorted_experts = flat[order]
    rank_in_expert = torch.arange(pairs, device=flat.device) - (torch.cumsum(counts, 0)
                                                                 - counts)[sorted_experts]
    blocks = -(-pairs // block_m) + num_experts
    rows = torch.full((blocks * block_m,), -1, dtype=torch.int64, device=flat.device)
    rows[(padded_end - padded)[sorted_experts] + rank_in_expert] = order
    starts = torch.arange(blocks, device=flat.device) * block_m
    block_expert = torch.searchsorted(padded_end, starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1)
    return rows, block_expert


def grouped_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    route_weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum over each token's top k experts e of route * down_e(silu(gate_e x) * up_e x).
    x [T, H]; w13 [E, 2I, H]; w2 [E, H, I]; route_weights, experts [T, k]."""
    tokens, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter = two_inter // 2
    top_k = experts.shape[1]
    pairs = tokens * top_k
    if pairs <= PAIR_PATH_MAX_PAIRS:
        return pair_experts(x, w13, w2, route_weights, experts)
    block_m = 16 if pairs <= 16 * num_experts else 64
    rows, block_expert = sort_by_expert(experts, num_experts, block_m)
    blocks = block_expert.shape[0]
    x = x.contiguous()
    activated = torch.empty(pairs, inter, dtype=x.dtype, device=x.device)
    block_n, block_k = 64, 64
    _moe_gate_up_kernel[(blocks, triton.cdiv(inter, block_n))](
        x, w13, activated, rows, block_expert, x.stride(0), w13.stride(0), w13.stride(1),
        activated.stride(0), TOP_K=top_k, HIDDEN=hidden, INTER=inter, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    per_pair = torch.empty(pairs, hidden, dtype=x.dtype, device=x.device)
    route = route_weights.reshape(-1).to(torch.float32).contiguous()
    _moe_down_kernel[(blocks, triton.cdiv(hidden, block_n))](
        activated, w2, route, per_pair, rows, block_expert, activated.stride(0), w2.stride(0),
        w2.stride(1), per_pair.stride(0), HIDDEN=hidden, INTER=inter, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return per_pair.view(tokens, top_k, hidden).sum(dim=1)
