"""The GPU kernels the model families added, under Triton's interpreter against the PyTorch
path: paged attention with a sliding window and soft-capped scores, and the grouped expert
GEMM of mixture-of-experts layers (their sm_90 compilation: tests/test_hopper_compile.py)."""

from __future__ import annotations

import pytest
import torch

import triton_interpreter

if not triton_interpreter.enable():
    pytest.fail("triton is not installed: the kernel tests need it (pip install triton)")

from container.engine.kernels import moe  # noqa: E402
from container.engine.kernels.moe import (grouped_experts, route_top_k,  # noqa: E402
                                          sort_by_expert)
from container.engine.kernels.paged_attention import paged_decode, paged_prefill  # noqa: E402
from container.engine.kernels.workspace import DecodeWorkspace  # noqa: E402
from container.engine.layers.attention import TorchPagedAttention, write_kv  # noqa: E402
from container.engine.layers.moe import experts_reference, route  # noqa: E402
from test_kernels import paged_case  # noqa: E402


@pytest.mark.parametrize("window, softcap", [(8, None), (20, None), (None, 5.0), (8, 5.0)])
@pytest.mark.parametrize("lens, query_lens", [([37, 5, 100], [37, 2, 30]),
                                              ([37, 5, 100, 1], [1, 1, 1, 1])])
def test_paged_attention_window_and_softcap_match_the_reference(window, softcap, lens,
                                                                 query_lens):
    cache, meta, q, k, v = paged_case(4, 2, 64, 16, lens, query_lens)
    scale = 64 ** -0.5
    reference = TorchPagedAttention(scale, window, softcap)(q, k, v, cache.clone(), meta)
    unwindowed = TorchPagedAttention(scale)(q, k, v, cache.clone(), meta)
    assert not torch.allclose(reference, unwindowed, atol=1e-3)     # the inputs matter
    write_kv(cache, k, v, meta.slot_mapping)
    out = paged_prefill(q, cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                        meta.max_query_len, scale, window=window or 0, softcap=softcap or 0.0)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    if max(query_lens) == 1:
        for splits in (1, 3):
            decoded = paged_decode(q, cache, meta.block_tables, meta.seq_lens, scale, splits,
                                   DecodeWorkspace(), window=window or 0,
                                   softcap=softcap or 0.0)
            torch.testing.assert_close(decoded, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tokens, experts, top_k, hidden, inter", [
    (1, 8, 2, 64, 48),        # decode: most experts idle
    (37, 4, 2, 64, 96),       # prefill: every expert busy, runs not a multiple of the block
    (5, 8, 3, 32, 40),
])
@pytest.mark.parametrize("path", ["as chosen", "sorted"])
def test_grouped_expert_gemm_matches_the_reference(tokens, experts, top_k, hidden, inter, path,
                                                   monkeypatch):
    """Few (token, expert) pairs take the direct pair kernels, more the sorted grouped GEMM;
    "sorted" sends every size through the latter."""
    if path == "sorted":
        monkeypatch.setattr(moe, "PAIR_PATH_MAX_PAIRS", 0)
    torch.manual_seed(tokens)
    x = torch.randn(tokens, hidden)
    w13 = torch.randn(experts, 2 * inter, hidden) * 0.1
    w2 = torch.randn(experts, hidden, inter) * 0.1
    weights, chosen = route(torch.randn(tokens, experts), top_k, renormalize=True)
    out = grouped_experts(x, w13, w2, weights, chosen)
    torch.testing.assert_close(out, experts_reference(x, w13, w2, weights, chosen),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("experts, top_k, renormalize", [(8, 2, True), (128, 8, False),
                                                          (60, 4, True)])
def test_routing_kernel_matches_the_torch_routing(experts, top_k, renormalize, monkeypatch):
    """Softmax, top k and the rescaling in one launch (batch-1 decode: one kernel, not five)."""
    monkeypatch.delenv("SERVE_KERNELS_ON_CPU", raising=False)     # route(): the torch path
    torch.manual_seed(experts)
    logits = torch.randn(5, experts) * 3
    want_weights, want_experts = route(logits, top_k, renormalize)
    weights, chosen = route_top_k(logits, top_k, renormalize)
    assert torch.equal(chosen, want_experts)
    torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)


def test_sort_by_expert_pads_each_expert_to_whole_blocks():
    chosen = torch.tensor([[2, 0], [2, 1], [0, 2]])
    rows, block_expert = sort_by_expert(chosen, 4, 4)
    assert block_expert.tolist()[:3] == [0, 1, 2] and set(block_expert.tolist()[3:]) == {-1}
    assert rows.view(-1, 4)[:3].tolist() == [[1, 4, -1, -1], [3, -1, -1, -1],
                                             [0, 2, 5, -1]]


@pytest.mark.parametrize("architecture", ["gemma2", "qwen3-moe", "phi3", "mistral-sliding"])
def test_family_on_the_kernel_path_matches_transformers(monkeypatch, tmp_path, architecture):
    """The GPU code path of each family (Triton kernels, here interpreted): sliding window and
    soft-capping (Gemma 2), q/k norm and grouped experts (Qwen3-MoE), partial rotary outside
    the fused rope kernel (Phi-3), sliding window (Mistral)."""
    from container.engine.model_config import ModelConfig
    from test_engine import make_engine, random_prompts, run_staggered
    from tiny_models import build_model, reference_greedy

    monkeypatch.setenv("SERVE_KERNELS_ON_CPU", "1")
    model_dir = build_model(tmp_path / "m", architecture)
    prompts = random_prompts(ModelConfig.from_dir(model_dir).vocab_size, count=6)
    engine = make_engine(model_dir, num_blocks=12, budget=24)
    assert run_staggered(engine, prompts, 6) == reference_greedy(model_dir, prompts, 6)
    assert engine.scheduler.total_preemptions > 0
