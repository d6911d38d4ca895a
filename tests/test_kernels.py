"""The GPU path's Triton kernels, run on the CPU by Triton's interpreter, against the PyTorch
reference path (and, for the whole model, against transformers)."""

from __future__ import annotations

import random

import pytest
import torch

import triton_interpreter

if not triton_interpreter.enable():
    pytest.fail("triton is not installed: the kernel tests need it (pip install triton)")

from container.engine.kernels import fused  # noqa: E402
from container.engine.kernels.paged_attention import paged_decode, paged_prefill  # noqa: E402
from container.engine.kernels.workspace import DecodeWorkspace  # noqa: E402
from container.engine.layers.attention import (AttentionMetadata, TorchPagedAttention,  # noqa: E402
                                               write_kv)
from container.engine.layers.norm import RMSNorm  # noqa: E402
from container.engine.layers.rotary import RotaryEmbedding  # noqa: E402


def paged_case(group, kv_heads, dim, page, lens, query_lens, seed=0):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    q_heads, blocks = group * kv_heads, 64
    cache = torch.randn(2, blocks, page, kv_heads, dim)
    pages = list(range(blocks))
    rng.shuffle(pages)
    tables = torch.zeros(len(lens), max(-(-n // page) for n in lens), dtype=torch.int64)
    used = 0
    for i, n in enumerate(lens):
        count = -(-n // page)
        tables[i, :count] = torch.tensor(pages[used:used + count])
        used += count
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    slots = [int(tables[i, p // page]) * page + p % page
             for i, (n, m) in enumerate(zip(lens, query_lens)) for p in range(n - m, n)]
    meta = AttentionMetadata(torch.tensor(slots), torch.tensor(starts), torch.tensor(lens),
                             tables, max(query_lens), max(lens), starts, lens)
    q = torch.randn(starts[-1], q_heads, dim)
    k = torch.randn(starts[-1], kv_heads, dim)
    v = torch.randn(starts[-1], kv_heads, dim)
    return cache, meta, q, k, v


@pytest.mark.parametrize("group, kv_heads, dim, page, lens, query_lens", [
    (4, 2, 64, 16, [37, 5, 100], [37, 2, 30]),       # prompts, a chunk after a cached prefix
    (3, 3, 64, 8, [20, 9], [4, 9]),                  # a GQA group that is not a power of two
    (1, 2, 32, 16, [1, 33], [1, 16]),
    (4, 2, 64, 16, [37, 5, 100, 1], [1, 1, 1, 1]),   # pure decode
    (3, 1, 64, 8, [70, 3], [1, 1]),
])
def test_paged_attention_kernels_match_the_reference(group, kv_heads, dim, page, lens, query_lens):
    cache, meta, q, k, v = paged_case(group, kv_heads, dim, page, lens, query_lens)
    scale = dim ** -0.5
    reference = TorchPagedAttention(scale)(q, k, v, cache.clone(), meta)
    write_kv(cache, k, v, meta.slot_mapping)
    out = paged_prefill(q, cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                        meta.max_query_len, scale)
    assert torch.allclose(out, reference, atol=1e-4), (out - reference).abs().max()
    if max(query_lens) == 1:
        for splits in (1, 3, 8):
            decoded = paged_decode(q, cache, meta.block_tables, meta.seq_lens, scale, splits,
                                   DecodeWorkspace())
            assert torch.allclose(decoded, reference, atol=1e-4), splits


def test_decode_split_merge_in_kernel_leaves_its_counters_at_zero():
    from container.engine.kernels import paged_attention

    cache, meta, q, k, v = paged_case(4, 2, 64, 16, [37, 5, 100, 1], [1, 1, 1, 1])
    write_kv(cache, k, v, meta.slot_mapping)
    workspace = DecodeWorkspace()
    first = paged_decode(q, cache, meta.block_tables, meta.seq_lens, 0.1, 5, workspace)
    assert workspace.arrivals(4, 2, q.device).eq(0).all()
    again = paged_decode(q, cache, meta.block_tables, meta.seq_lens, 0.1, 5, workspace)
    assert torch.equal(first, again)
    separate = dict(paged_attention.DECODE_CONFIGS[True], merge_here=False)
    paged_attention.DECODE_OVERRIDE = separate
    try:
        merged_apart = paged_decode(q, cache, meta.block_tables, meta.seq_lens, 0.1, 5,
                                    DecodeWorkspace())
    finally:
        paged_attention.DECODE_OVERRIDE = None
    assert torch.allclose(first, merged_apart, atol=1e-5)


def test_decode_kernel_ignores_padding_rows():
    cache, meta, q, k, v = paged_case(2, 2, 32, 8, [9, 0], [1, 1])
    write_kv(cache, k[:1], v[:1], meta.slot_mapping[:1])
    out = paged_decode(q, cache, meta.block_tables, meta.seq_lens, 0.2, 4, DecodeWorkspace())
    assert torch.isfinite(out).all() and out[1].abs().max() == 0


def test_fused_rms_norm_matches_pytorch():
    from container.engine.layers.norm import RMSNorm

    norm = RMSNorm(96, 1e-5)
    norm.weight.data = torch.randn(96)
    x, residual = torch.randn(5, 96), torch.randn(5, 96)
    out, new_residual = fused.rms_norm(x, norm.weight, 1e-5, residual)
    expected = x + residual
    reference = norm.weight * (expected * torch.rsqrt(expected.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.allclose(new_residual, expected) and torch.allclose(out, reference, atol=1e-5)
    alone, _ = fused.rms_norm(x, norm.weight, 1e-5)
    assert torch.allclose(alone, norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)),
                          atol=1e-5)


def test_fused_rope_and_cache_write_match_pytorch():
    rotary = RotaryEmbedding(64, 128, 10000.0, {"rope_type": "llama3", "factor": 8.0,
                                                 "original_max_position_embeddings": 32})
    tokens, q_heads, kv_heads, page = 7, 6, 2, 8
    q, k, v = torch.randn(tokens, q_heads, 64), torch.randn(tokens, kv_heads, 64), torch.randn(tokens, kv_heads, 64)
    positions = torch.tensor([0, 1, 2, 50, 51, 90, 127])
    slots = torch.tensor([3, 4, 5, 17, 18, 30, 9])
    cache = torch.zeros(2, 5, page, kv_heads, 64)
    expected_cache = cache.clone()
    q_ref, k_ref = rotary(positions, q, k)
    write_kv(expected_cache, k_ref, v, slots)
    fused.rope_and_cache(q, k, v, positions, rotary.cos, rotary.sin, cache, slots)
    assert torch.allclose(q, q_ref, atol=1e-5)
    assert torch.allclose(cache, expected_cache, atol=1e-5)


def test_fused_rope_and_cache_with_qk_norms_match_pytorch():
    """Qwen3 / Gemma 3: each head RMS-normalised, then rotated and cached, in one launch."""
    rotary = RotaryEmbedding(64, 128, 10000.0, None)
    tokens, q_heads, kv_heads, page = 5, 4, 2, 8
    torch.manual_seed(2)
    q, k, v = (torch.randn(tokens, h, 64) * 3 for h in (q_heads, kv_heads, kv_heads))
    q_norm, k_norm = RMSNorm(64, 1e-6), RMSNorm(64, 1e-6)
    q_norm.weight.data.uniform_(0.5, 1.5)
    k_norm.weight.data.uniform_(0.5, 1.5)
    positions, slots = torch.tensor([0, 3, 9, 60, 127]), torch.tensor([3, 4, 17, 30, 9])
    cache, expected_cache = torch.zeros(2, 5, page, kv_heads, 64), torch.zeros(2, 5, page,
                                                                              kv_heads, 64)
    q_ref, k_ref = rotary(positions, q_norm(q.reshape(-1, 64)).view_as(q),
                          k_norm(k.reshape(-1, 64)).view_as(k))
    write_kv(expected_cache, k_ref, v, slots)
    fused.rope_and_cache(q, k, v, positions, rotary.cos, rotary.sin, cache, slots,
                         (q_norm.weight, k_norm.weight, 1e-6))
    assert torch.allclose(q, q_ref, atol=1e-5)
    assert torch.allclose(cache, expected_cache, atol=1e-5)


def test_fused_silu_and_mul():
    x = torch.randn(3, 2 * 1500)
    gate, up = x.chunk(2, dim=-1)
    assert torch.allclose(fused.silu_and_mul(x), torch.nn.functional.silu(gate) * up, atol=1e-5)


def test_argmax_rows_gives_torchs_first_maximum():
    torch.manual_seed(3)
    x = torch.randn(4, 9000).to(torch.bfloat16)
    x[1, 5000] = x[1, 7000] = x[1, 8999] = 50.0          # ties across parts: the first wins
    x[2, 100] = x[2, 101] = 50.0                          # ties inside one lane block
    x[3] = float("-inf")
    out = torch.full((4,), -1, dtype=torch.int64)
    fused.argmax_rows(x, out)
    assert out.tolist() == x.float().argmax(dim=-1).tolist() == [out[0].item(), 5000, 100, 0]


def test_gemv_matches_a_matmul():
    from container.engine.kernels.gemv import gemv

    x, weight = torch.randn(1, 1000), torch.randn(77, 1000)
    assert torch.allclose(gemv(x, weight), x @ weight.T, atol=1e-4)


def test_decode_plan_unpacks_into_the_graph_inputs():
    """The decode graph's first kernel: a StepPlan's decode arrays into the static inputs,
    placeholders resolved from the previous step's tokens, padding rows past the batch."""
    from container.engine.kernels.step_inputs import unpack_decode_plan
    from container.engine.model_runner import PLACEHOLDER, StepPlan
    from container.engine.scheduler import ScheduledSeq
    from container.engine.sequence import Sequence
    from container.workers.protocol import SamplingParams

    seqs = []
    for i, (length, blocks) in enumerate([(5, [7]), (37, [3, 9, 4]), (17, [11, 2])]):
        seq = Sequence(str(i), list(range(100 + i, 100 + i + length)),
                       SamplingParams(max_new_tokens=8))
        seq.block_ids = blocks
        seq.num_computed_tokens = length - 1
        seqs.append(seq)
    seqs[0].token_ids[-1] = PLACEHOLDER
    seqs[2].token_ids[-1] = PLACEHOLDER
    plan = StepPlan.build([ScheduledSeq(seq, 1) for seq in seqs], 16,
                          {id(seqs[0]): 4, id(seqs[2]): 1})
    previous = torch.tensor([50, 51, 52, 53, 54, 55])
    rows, width, scratch = 5, 32, 999
    input_ids = torch.full((rows,), -7, dtype=torch.int64)
    positions, slots, seq_lens = input_ids.clone(), input_ids.clone(), input_ids.clone()
    tables = torch.full((8, width), -7, dtype=torch.int64)
    buffer = torch.full((plan.data.shape[0] + 40,), -7, dtype=torch.int64)
    buffer[:plan.data.shape[0]] = torch.from_numpy(plan.data)
    unpack_decode_plan(buffer, previous, input_ids, positions, slots, seq_lens, tables[:rows],
                       scratch)
    assert input_ids.tolist() == [54, 100 + 1 + 36, 51, 0, 0]
    assert positions.tolist() == [4, 36, 16, 0, 0]
    assert slots.tolist() == [7 * 16 + 4, 4 * 16 + 4, 2 * 16 + 0, scratch, scratch]
    assert seq_lens.tolist() == [5, 37, 17, 0, 0]
    assert tables[0, :16].tolist() == [7] + [0] * 15
    assert tables[1, :16].tolist() == [3, 9, 4] + [0] * 13
    assert tables[2, :16].tolist() == [11, 2] + [0] * 14
    assert (tables[:, 16:] == -7).all() and (tables[3:] == -7).all()


def test_whole_engine_on_the_kernel_path_matches_transformers(monkeypatch, tmp_path):
    from container.engine.model_config import ModelConfig
    from test_engine import make_engine, random_prompts, run_staggered
    from tiny_models import build_model, reference_greedy

    monkeypatch.setenv("SERVE_KERNELS_ON_CPU", "1")
    model_dir = build_model(tmp_path / "m", "llama")
    prompts = random_prompts(ModelConfig.from_dir(model_dir).vocab_size, count=6)
    engine = make_engine(model_dir, num_blocks=12, budget=24)
    assert run_staggered(engine, prompts, 6) == reference_greedy(model_dir, prompts, 6)
    assert engine.scheduler.total_preemptions > 0


def test_allreduce_add_norm_kernel_one_rank_cycles_its_slots():
    """The fused tensor-parallel all-reduce + add + norm, with one rank (the interpreter runs
    no peers; the exchange with two GPUs is checked against NCCL at start-up, on every run).
    Five calls walk the three slots: each call's sum, residual and norm must be exact, the
    slot in use must hold the rows just sent, and the slot before must be back to -0.0."""
    from container.engine.kernels.allreduce_norm import SLOTS, _allreduce_add_norm_kernel

    rows, n, max_rows, eps = 3, 64, 4, 1e-5
    buffer = torch.full((SLOTS, 1, max_rows, n), -0.0, dtype=torch.half)
    pointers = torch.tensor([buffer.data_ptr()], dtype=torch.int64)
    epochs = torch.zeros(max_rows, dtype=torch.int64)
    generator = torch.Generator().manual_seed(3)
    for call in range(1, 6):
        x = torch.randn(rows, n, generator=generator).half()
        residual = torch.randn(rows, n, generator=generator).half()
        weight = (torch.rand(n, generator=generator) + 0.5).half()
        x[0, 0] = -0.0                                 # a partial equal to the sentinel
        out, residual_out = torch.empty_like(x), torch.empty_like(x)
        _allreduce_add_norm_kernel[(rows,)](
            x, residual, weight, out, residual_out, pointers, epochs, eps, n, n, n, n,
            RANK=0, WORLD=1, MAX_ROWS=max_rows, N=n, BLOCK=n, HAS_RESIDUAL=True, PDL=False)
        summed = (x.float() + residual.float()).half()
        h = summed.float()
        expected = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).half()
        assert torch.equal(residual_out, summed)
        assert torch.allclose(out.float(), expected.float(), atol=1e-3)
        assert epochs.tolist() == [call] * rows + [0]
        sentinel = buffer.view(torch.int16) == -32768
        current, stale = call % SLOTS, (call + 2) % SLOTS
        assert not sentinel[current, 0, :rows].any() and sentinel[current, 0, rows:].all()
        assert sentinel[stale].all()
