"""Attention over the paged KV cache.

Every step's tokens arrive flattened ([num_tokens, heads, head_dim]); sequence i owns query
rows query_start[i]:query_start[i+1] and, after this step, seq_lens[i] tokens of KV spread over
the blocks in block_tables[i]. New K/V are written to their slots first, then each query
attends to every cached token at or before its own position.

The backend here is plain PyTorch (gather the sequence's blocks, then SDPA): the reference,
and the CPU path. GPU kernels live in ../kernels and plug in through the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..quant.kv_cache import from_cache, storage, to_cache


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor        # [T] int64: block * block_size + offset of each new token
    query_start_loc: torch.Tensor     # [B+1] int32
    seq_lens: torch.Tensor            # [B] int32: tokens in the cache after this step
    block_tables: torch.Tensor        # [B, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    # host copies, for the per-sequence loop of the torch backend
    query_start_host: list[int] | None
    seq_lens_host: list[int] | None
    num_decode: int = 0               # the first num_decode sequences have one query token
    decode_only: bool = False         # every sequence has one query token (GPU: split-KV kernel)
    decode_splits: int = 1
    workspace: object = None          # kernels.paged_attention.DecodeWorkspace on GPU
    step_cache: dict = field(default_factory=dict)   # torch path: what every layer shares


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """kv_cache: [2, num_blocks, block_size, kv_heads, head_dim], of the model's type or FP8."""
    heads, dim = kv_cache.shape[-2:]
    cache = storage(kv_cache)
    cache[0].view(-1, heads, dim).index_copy_(0, slot_mapping, to_cache(k, kv_cache.dtype))
    cache[1].view(-1, heads, dim).index_copy_(0, slot_mapping, to_cache(v, kv_cache.dtype))


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """cache[blocks] for one of K or V ([num_blocks, block_size, heads, dim]) and a tensor of
    block ids of any shape. index_select over whole blocks as rows copies each block in one
    piece; advanced indexing walks it element by element (4 to 6x slower on CPU)."""
    rows = torch.index_select(cache.view(cache.shape[0], -1), 0, blocks.reshape(-1))
    return rows.view(*blocks.shape, *cache.shape[1:])


def gather_kv(cache: torch.Tensor, blocks: torch.Tensor, dtype: torch.dtype):
    """(keys, values) of the given blocks from a cache's storage ([2, num_blocks, ...]), in
    the activations' type: [*blocks.shape, block_size, kv_heads, head_dim] each."""
    return (from_cache(gather_blocks(cache[0], blocks), dtype),
            from_cache(gather_blocks(cache[1], blocks), dtype))


class TorchPagedAttention:
    """Reference backend: correct for any mix of prefill chunks and decodes.

    window: a query at position p sees keys p - window + 1 .. p only (sliding window)."""

    name = "torch"

    def __init__(self, scale: float, window: int | None = None, softcap: float | None = None):
        self.scale = scale
        self.window = window
        self.softcap = softcap

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        write_kv(kv_cache, k, v, meta.slot_mapping)
        if meta.decode_only:
            return self._decode_batch(q, kv_cache, meta, meta.num_decode or q.shape[0],
                                      meta.max_seq_len)
        block_size = kv_cache.shape[2]
        cache = storage(kv_cache)
        out = torch.empty_like(q)
        starts = meta.query_start_host
        # the step's decodes (its first sequences) go as one batch; prefill chunks one by one
        decodes = meta.num_decode if meta.num_decode > 1 else 0
        if decodes:
            out[:decodes] = self._decode_batch(q[:decodes], kv_cache, meta, decodes,
                                               max(meta.seq_lens_host[:decodes]))
        for i in range(decodes, len(meta.seq_lens_host)):
            seq_len = meta.seq_lens_host[i]
            q_start, q_end = starts[i], starts[i + 1]
            blocks = meta.block_tables[i, :(seq_len + block_size - 1) // block_size]
            keys, values = gather_kv(cache, blocks, q.dtype)
            keys, values = keys.flatten(0, 1)[:seq_len], values.flatten(0, 1)[:seq_len]
            out[q_start:q_end] = self._attend(q[q_start:q_end], keys, values, seq_len)
        return out

    def _decode_batch(self, q, kv_cache, meta: AttentionMetadata, count: int,
                      max_len: int) -> torch.Tensor:
        """The first `count` sequences, one query token each, longest max_len: gather their
        blocks at once and run one masked SDPA over the padded batch (instead of a call per
        sequence), the query heads of each KV head side by side as its query rows. That
        grouping, rather than SDPA's enable_gqa, keeps CPU SDPA on its fused kernel: in bf16 it
        was 3 to 5x faster at 1 to 32 sequences on our CI's CPU, and no slower in fp32."""
        block_size = kv_cache.shape[2]
        tables = meta.block_tables[:count, :-(-max_len // block_size)]
        batch, heads, dim = q.shape
        keys, values = gather_kv(storage(kv_cache), tables, q.dtype)
        keys = keys.flatten(1, 2).transpose(1, 2)                           # [B, Hk, L, D]
        values = values.flatten(1, 2).transpose(1, 2)
        mask = self._decode_mask(meta, count, keys.shape[2])
        if self.softcap:
            return self._sdpa(q.unsqueeze(2), keys, values, mask).squeeze(2)
        kv_heads = keys.shape[1]
        grouped = q.view(batch, kv_heads, heads // kv_heads, dim)         # [B, Hk, G, D]
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask,
                                             scale=self.scale)
        return out.reshape(batch, heads, dim)

    def _decode_mask(self, meta: AttentionMetadata, count: int, length: int) -> torch.Tensor:
        """[B, 1, 1, L]: which gathered keys each of the first `count` sequences sees; made
        once per step and window, as every layer of that kind asks for the same one."""
        key = ("decode_mask", count, length, self.window)
        mask = meta.step_cache.get(key)
        if mask is None:
            seq_lens = meta.seq_lens[:count, None]
            keys_at = torch.arange(length, device=meta.seq_lens.device)[None, :]
            visible = keys_at < seq_lens
            if self.window:
                visible &= keys_at >= seq_lens - self.window
            mask = meta.step_cache[key] = visible[:, None, None, :]
        return mask

    def _sdpa(self, q, k, v, mask):
        """[.., H, L, D] attention; with soft-capping (Gemma 2) written out, as SDPA has none."""
        if not self.softcap:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                  enable_gqa=True)
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)

    def _attend(self, q, keys, values, seq_len):
        n = q.shape[0]
        mask = None
        if n > 1 or self.window:
            # query i sits at position seq_len - n + i and sees keys 0..that position
            rows = torch.arange(seq_len - n, seq_len, device=q.device).unsqueeze(1)
            keys_at = torch.arange(seq_len, device=q.device).unsqueeze(0)
            mask = keys_at <= rows
            if self.window:
                mask &= keys_at > rows - self.window
        # 4-D [1, H, S, D]: CPU SDPA takes its fused kernel only for 4-D inputs (3-D falls back
        # to the math path, 1.4x slower at 128 tokens and 3x at 512 on our CI's CPU)
        out = self._sdpa(q.transpose(0, 1)[None], keys.transpose(0, 1)[None],
                         values.transpose(0, 1)[None], mask)
        return out[0].transpose(0, 1)


class TritonPagedAttention:
    """GPU backend: Triton kernels (kernels/paged_attention.py). K/V are already in the cache
    (written by the fused rotary kernel), so this only attends."""

    name = "triton"

    def __init__(self, scale: float, window: int | None = None, softcap: float | None = None):
        self.scale = scale
        self.window = window or 0
        self.softcap = softcap or 0.0

    def __call__(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata):
        from ..kernels.paged_attention import paged_decode, paged_prefill

        if meta.decode_only:
            return paged_decode(q, kv_cache, meta.block_tables, meta.seq_lens, self.scale,
                                meta.decode_splits, meta.workspace, window=self.window,
                                softcap=self.softcap)
        return paged_prefill(q, kv_cache, meta.block_tables, meta.seq_lens,
                             meta.query_start_loc, meta.max_query_len, self.scale,
                             window=self.window, softcap=self.softcap)
