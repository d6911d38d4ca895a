"""Triton kernels for attention over the paged KV cache (GPU path).

KV cache layout (per layer): [2, num_blocks, block_size, kv_heads, head_dim], in the model's
type or FP8 (e4m3, scale 1.0: read and widened to the query's type). Both kernels
process a whole GQA group per program (the query heads that share one KV head), so K and V
are read once per group.

- paged_prefill: any mix of new-prompt chunks and decodes, in flattened varlen form. Query
  token i of sequence b sits at position seq_len - q_len + i and sees keys 0..that position,
  including a cached prefix (chunked prefill, prefix caching).
- paged_decode: one query token per sequence, the KV range split across programs
  (flash-decoding) so a small batch still fills the GPU; the last split of each group to
  finish merges them (or, optionally, a second kernel does).
  The grid depends only on the batch size, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch, pdl_prologue
from .workspace import DecodeWorkspace


@triton.jit
def _attend_keys(q, keys, key_ok, visible, m_i, l_i, acc, k_cache_ptr, v_cache_ptr,
                 block_tables_ptr, seq, stride_bt, kv_head, stride_kb, stride_ks, stride_kh,
                 dims, dim_ok, scale, softcap, PAGE: tl.constexpr):
    """One block of keys of the paged cache, folded into the online softmax of the query rows
    q: their running maxima m_i, sums l_i and weighted values acc. Keys not `visible` to a row
    (masked, or after it) weigh nothing."""
    page = tl.load(block_tables_ptr + seq * stride_bt + keys // PAGE, mask=key_ok, other=0)
    offset = page * stride_kb + (keys % PAGE) * stride_ks + kv_head * stride_kh
    # an FP8 cache (scale 1.0) is widened to the query's type; otherwise a no-op
    k = tl.load(k_cache_ptr + offset[:, None] + dims[None, :],
                mask=key_ok[:, None] & dim_ok[None, :], other=0.0).to(q.dtype)
    scores = tl.dot(q, tl.trans(k)) * scale
    if softcap > 0:      # Gemma 2: cap * tanh(score / cap), tanh written with a sigmoid
        scores = softcap * (2.0 * tl.sigmoid(2.0 * scores / softcap) - 1.0)
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(scores - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + offset[:, None] + dims[None, :],
                mask=key_ok[:, None] & dim_ok[None, :], other=0.0).to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
    scale,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_ot, stride_oh,
    stride_bt, window, softcap,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len                          # tokens cached before this chunk

    # rows = (query position within tile, head within group), flattened
    rows = tl.arange(0, BLOCK_M * GROUP_PAD)
    q_pos = tile * BLOCK_M + rows // GROUP_PAD
    head = rows % GROUP_PAD
    row_ok = (q_pos < q_len) & (head < GROUP)
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q_heads = kv_head * GROUP + head
    q = tl.load(q_ptr + (q_start + q_pos)[:, None] * stride_qt + q_heads[:, None] * stride_qh
                + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP_PAD, DIM_PAD], tl.float32)
    absolute = context + q_pos                          # each row's own position
    last_key = tl.minimum(context + (tile + 1) * BLOCK_M, seq_len)
    # sliding window (window > 0): the tile's first row sees nothing before first_key
    windowed = window > 0
    first_key = tl.where(windowed, tl.maximum(context + tile * BLOCK_M - window + 1, 0), 0)
    first_key = first_key // BLOCK_N * BLOCK_N
    for start in range(first_key, last_key, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < seq_len
        in_window = (keys[None, :] > absolute[:, None] - window) | (window <= 0)
        visible = (keys[None, :] <= absolute[:, None]) & key_ok[None, :] & in_window
        m_i, l_i, acc = _attend_keys(
            q, keys, key_ok, visible, m_i, l_i, acc, k_cache_ptr, v_cache_ptr,
            block_tables_ptr, seq, stride_bt, kv_head, stride_kb, stride_ks, stride_kh, dims,
            dim_ok, scale, softcap, PAGE)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + (q_start + q_pos)[:, None] * stride_ot + q_heads[:, None] * stride_oh
             + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    partial_out_ptr, partial_max_ptr, partial_sum_ptr, out_ptr, arrivals_ptr,
    scale,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_bt,
    stride_pt, stride_ph, stride_ps, stride_ot, stride_oh, window, softcap,
    GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
    MERGE_HERE: tl.constexpr, PDL: tl.constexpr,
):
    # The group's query heads are the rows of a (padded) 16-row tile, so scores and the
    # weighted sum of values run on tensor cores; the kernel stays bound by reading K and V.
    pdl_prologue(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # sliding window (window > 0): only the last `window` keys, split as usual
    first = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)
    chunk = tl.cdiv(tl.cdiv(seq_len - first, SPLITS), BLOCK_N) * BLOCK_N
    begin = first + split * chunk
    end = tl.minimum(begin + chunk, seq_len)

    heads = tl.arange(0, ROWS)
    head_ok = heads < GROUP
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q_heads = kv_head * GROUP + heads
    q = tl.load(q_ptr + seq * stride_qt + q_heads[:, None] * stride_qh + dims[None, :],
                mask=head_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, DIM_PAD], tl.float32)
    for start in range(begin, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < end
        m_i, l_i, acc = _attend_keys(
            q, keys, key_ok, key_ok[None, :], m_i, l_i, acc, k_cache_ptr, v_cache_ptr,
            block_tables_ptr, seq, stride_bt, kv_head, stride_kb, stride_ks, stride_kh, dims,
            dim_ok, scale, softcap, PAGE)
    if SPLITS == 1:                                    # nothing to merge: write the answer
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + seq * stride_ot + q_heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :])
    else:
        base = seq * stride_pt + q_heads * stride_ph + split * stride_ps
        tl.store(partial_max_ptr + base, m_i, mask=head_ok)
        tl.store(partial_sum_ptr + base, l_i, mask=head_ok)
        tl.store(partial_out_ptr + base[:, None] * HEAD_DIM + dims[None, :], acc,
                 mask=head_ok[:, None] & dim_ok[None, :])
        if MERGE_HERE:
            # The group's last split to finish merges all of them (no second launch). The
            # barrier and the release half of the atomic publish this program's partials;
            # the acquire half lets the last one read everyone's (from L2: .cg loads).
            tl.debug_barrier()
            counter = arrivals_ptr + seq * tl.num_programs(1) + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLITS - 1:
                rows = seq * stride_pt + q_heads * stride_ph
                overall = tl.full([ROWS], float("-inf"), tl.float32)
                for s in tl.static_range(SPLITS):
                    overall = tl.maximum(overall, tl.load(
                        partial_max_ptr + rows + s * stride_ps, mask=head_ok,
                        other=float("-inf"), cache_modifier=".cg"))
                overall = tl.where(overall == float("-inf"), 0.0, overall)
                total = tl.zeros([ROWS], tl.float32)
                merged = tl.zeros([ROWS, DIM_PAD], tl.float32)
                for s in tl.static_range(SPLITS):
                    at = rows + s * stride_ps
                    top = tl.load(partial_max_ptr + at, mask=head_ok, other=float("-inf"),
                                  cache_modifier=".cg")
                    part_sum = tl.load(partial_sum_ptr + at, mask=head_ok, other=0.0,
                                       cache_modifier=".cg")
                    weight = tl.where(part_sum > 0, tl.exp(top - overall), 0.0)
                    part = tl.load(partial_out_ptr + at[:, None] * HEAD_DIM + dims[None, :],
                                   mask=head_ok[:, None] & dim_ok[None, :], other=0.0,
                                   cache_modifier=".cg")
                    merged += part * weight[:, None]
                    total += part_sum * weight
                out = merged / tl.where(total == 0.0, 1.0, total)[:, None]
                tl.store(out_ptr + seq * stride_ot + q_heads[:, None] * stride_oh
                         + dims[None, :], out.to(out_ptr.dtype.element_ty),
                         mask=head_ok[:, None] & dim_ok[None, :])
                tl.store(counter, 0)                   # ready for the next launch


@triton.jit
def _decode_merge_kernel(
    partial_out_ptr, partial_max_ptr, partial_sum_ptr, out_ptr,
    stride_pt, stride_ph, stride_ps, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr, PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < SPLITS
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    base = seq * stride_pt + head * stride_ph + splits * stride_ps
    maxima = tl.load(partial_max_ptr + base, mask=split_ok, other=float("-inf"))
    sums = tl.load(partial_sum_ptr + base, mask=split_ok, other=0.0)
    overall = tl.max(maxima, 0)
    overall = tl.where(overall == float("-inf"), 0.0, overall)
    weights = tl.where(split_ok & (sums > 0), tl.exp(maxima - overall), 0.0)
    parts = tl.load(partial_out_ptr + base[:, None] * HEAD_DIM + dims[None, :],
                    mask=split_ok[:, None] & dim_ok[None, :], other=0.0)
    total = tl.sum(sums * weights, 0)
    out = tl.sum(parts * weights[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dim_ok)


def _pad(n: int) -> int:
    return max(1, 1 << (n - 1).bit_length())


def paged_prefill(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                  seq_lens: torch.Tensor, query_start_loc: torch.Tensor, max_query_len: int,
                  scale: float, out: torch.Tensor | None = None, window: int = 0,
                  softcap: float = 0.0) -> torch.Tensor:
    """q [T, Hq, D] -> [T, Hq, D]; KV of the new tokens must already be in the cache.
    window > 0: each query sees only the last `window` positions up to its own.
    softcap > 0: scores soft-capped as cap * tanh(score / cap)."""
    _, q_heads, dim = q.shape
    _, _, page, kv_heads, _ = kv_cache.shape
    group = q_heads // kv_heads
    out = torch.empty_like(q) if out is None else out
    group_pad = _pad(group)
    config = PREFILL_OVERRIDE or {}
    block_m = max(config.get("rows", 64) // group_pad, 1)   # rows: positions x heads
    block_n = config.get("block_n", 64 if dim <= 128 else 32)
    grid = (seq_lens.shape[0], kv_heads, triton.cdiv(max_query_len, block_m))
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens, query_start_loc, scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0), window, float(softcap),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim, DIM_PAD=_pad(dim), PAGE=page,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=config.get("num_warps", 4),
        num_stages=config.get("num_stages", 3))
    return out


PREFILL_OVERRIDE: dict | None = None    # a sweep's launch shape (decode_profile.py)


# Launch shape of the split kernel, by whether the KV range is split (small batches) or not,
# from sweeps on an H200 (bench/device/decode_profile.py, bench/results/decode_profile_h200.json):
# split, 16-key blocks and 2 warps (batch 1, 256 keys: 5.3 us a layer, 6.7 with the former
# 64-key blocks and 4 warps), merged by each group's last split instead of a second launch;
# unsplit, 2 warps (batch 256, 192 keys: 54.7 us against 57.5 with 4 warps and 3 stages).
DECODE_CONFIGS = {True: {"block_n": 16, "num_warps": 2, "num_stages": 2, "merge_here": True},
                  False: {"block_n": 64, "num_warps": 2, "num_stages": 2}}
DECODE_OVERRIDE: dict | None = None     # a sweep's choice, over both


def paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: torch.Tensor, scale: float, splits: int,
                 workspace: DecodeWorkspace, out: torch.Tensor | None = None,
                 window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """One query token per sequence: q [B, Hq, D] -> [B, Hq, D]; window and softcap as
    paged_prefill."""
    config = DECODE_OVERRIDE or DECODE_CONFIGS[splits > 1]
    merge_here = splits > 1 and config.get("merge_here", False)
    batch, q_heads, dim = q.shape
    _, _, page, kv_heads, _ = kv_cache.shape
    group = q_heads // kv_heads
    out = torch.empty_like(q) if out is None else out
    partial, maxima, sums = workspace.get(batch, q_heads, splits, dim, q.device)
    arrivals = workspace.arrivals(batch, kv_heads, q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _decode_split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, partial, maxima, sums, out, arrivals, scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        maxima.stride(0), maxima.stride(1), maxima.stride(2), out.stride(0), out.stride(1),
        window, float(softcap), GROUP=group, ROWS=max(16, _pad(group)), HEAD_DIM=dim, DIM_PAD=_pad(dim), PAGE=page,
        BLOCK_N=config["block_n"], SPLITS=splits, MERGE_HERE=merge_here,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
        **pdl_launch(q.device, batch))
    if splits == 1 or merge_here:
        return out
    _decode_merge_kernel[(batch, q_heads)](
        partial, maxima, sums, out,
        maxima.stride(0), maxima.stride(1), maxima.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=dim, DIM_PAD=_pad(dim), SPLITS=splits, SPLITS_PAD=_pad(splits), num_warps=4,
        **pdl_launch(q.device, batch))
    return out
