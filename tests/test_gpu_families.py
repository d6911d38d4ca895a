"""Each native model family's fast GPU path (Triton kernels, CUDA graphs; sliding windows,
soft-capping, q/k norms and experts included) against transformers on the same bf16 weights.
Needs an NVIDIA GPU; skipped cleanly where there is none."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA GPU on this machine")]

COMMON = dict(hidden_size=1024, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, head_dim=128, max_position_embeddings=4096,
              initializer_range=0.05, eos_token_id=None, tie_word_embeddings=False)

MOE_COMMON = {**COMMON, "initializer_range": 0.02}


def _config(family: str, vocab: int):
    import transformers as t

    if family == "qwen3":
        return t.Qwen3Config(vocab_size=vocab, intermediate_size=3072, **COMMON)
    if family == "gemma2":
        return t.Gemma2Config(vocab_size=vocab, intermediate_size=2048, sliding_window=64,
                              query_pre_attn_scalar=128, attn_logit_softcapping=50.0,
                              final_logit_softcapping=30.0, **COMMON)
    if family == "gemma3":
        return t.Gemma3TextConfig(
            vocab_size=vocab, intermediate_size=2048, sliding_window=64,
            query_pre_attn_scalar=128,
            layer_types=["sliding_attention", "full_attention"] * 2, **COMMON)
    if family == "phi3":
        return t.Phi3Config(vocab_size=vocab, intermediate_size=3072, pad_token_id=0,
                            **{k: v for k, v in COMMON.items() if k != "head_dim"})
    # Mixture of experts: every expert chosen for every token (top_k = num_experts), and
    # transformers' default initializer range. With top-2 of 8 and 0.05 weights, bf16 rounding
    # alone flips some token's second expert in some layer: transformers' own bf16 logits then
    # differ from its float32 ones by 8 % of their scale, as much as ours do, and no bf16
    # tolerance tells a flip from a bug. The top-k choice itself is checked by the grouped
    # kernel test below and, in float32 against transformers, by tests/test_model_families.py.
    if family == "mixtral":
        return t.MixtralConfig(vocab_size=vocab, intermediate_size=1024, num_local_experts=8,
                               num_experts_per_tok=8, **MOE_COMMON)
    if family == "qwen3_moe":
        return t.Qwen3MoeConfig(vocab_size=vocab, intermediate_size=2048,
                                moe_intermediate_size=512, num_experts=8, num_experts_per_tok=8,
                                norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                                **MOE_COMMON)
    raise KeyError(family)


FAMILIES = ["qwen3", "gemma2", "gemma3", "phi3", "mixtral", "qwen3_moe"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from tiny_models import build_tokenizer

    directory = tmp_path_factory.mktemp(f"gpu-{request.param}")
    tokenizer = build_tokenizer(directory, vocab_size=2000)
    config = _config(request.param, tokenizer.get_vocab_size())
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return directory


def test_family_logits_match_transformers_within_bf16_tolerance(family_model):
    from transformers import AutoModelForCausalLM

    from container.engine.model_config import ModelConfig
    from test_gpu import _engine, _last_logits, _prompts

    reference = AutoModelForCausalLM.from_pretrained(family_model,
                                                     dtype=torch.bfloat16).cuda().eval()
    engine = _engine(family_model)
    for prompt in _prompts(ModelConfig.from_dir(family_model).vocab_size):
        with torch.no_grad():
            expected = reference(torch.tensor([prompt], device="cuda")).logits[0, -1].float()
        ours = _last_logits(engine, prompt)
        scale = expected.abs().max().item()
        assert (ours - expected).abs().max().item() < 0.04 * scale
        assert torch.nn.functional.cosine_similarity(ours, expected, dim=0).item() > 0.998


def test_family_fast_path_greedy_matches_its_reference_path(family_model, monkeypatch):
    """As test_gpu's Llama check: every fork between the fast and the reference path is a
    bf16 near-tie of the reference path itself."""
    from container.engine.model_config import ModelConfig
    from test_gpu import _engine, _greedy, _last_logits, _prompts

    prompts = _prompts(ModelConfig.from_dir(family_model).vocab_size, count=6, seed=1)
    fast, _ = _greedy(_engine(family_model), prompts, 24)
    monkeypatch.setenv("SERVE_KERNELS", "0")
    reference_engine = _engine(family_model, graphs=False)
    reference, _ = _greedy(reference_engine, prompts, 24)
    for prompt, a, b in zip(prompts, fast, reference):
        if a == b:
            continue
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        logits = _last_logits(reference_engine, prompt + a[:first])
        scale = logits.abs().max().item()
        gap = logits.max().item() - logits[a[first]].item()
        # bf16 holds these logits to 1/32 steps: a near-tie is within a few of them
        assert gap < 0.03 * scale, f"fork at token {first} is not a near-tie (gap {gap:.3f})"


@pytest.mark.parametrize("experts_count,top_k", [(8, 2), (128, 8)])
@pytest.mark.parametrize("pair_path_max", [0, None])
def test_grouped_expert_kernel_matches_the_per_expert_reference(experts_count, top_k,
                                                                pair_path_max, monkeypatch):
    """The MoE Triton kernels (few tokens: each pair's expert read directly; more: tokens
    sorted by expert, all experts in one launch) against the per-expert PyTorch path, on the
    same routing, bf16, sizes from 1 token to a prefill; pair_path_max=0 sends every size
    through the sorted path."""
    from container.engine.kernels import moe
    from container.engine.layers.moe import experts_reference, route

    if pair_path_max is not None:
        monkeypatch.setattr(moe, "PAIR_PATH_MAX_PAIRS", pair_path_max)
    torch.manual_seed(0)
    hidden, inter = 1024, 512
    w13 = torch.randn(experts_count, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16) * 0.03
    w2 = torch.randn(experts_count, hidden, inter, device="cuda", dtype=torch.bfloat16) * 0.03
    for tokens in (1, 3, 4, 16, 100, 700):
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        weights, experts = route(torch.randn(tokens, experts_count, device="cuda"), top_k, True)
        ours = moe.grouped_experts(x, w13, w2, weights, experts).float()
        expected = experts_reference(x, w13, w2, weights, experts).float()
        error = ((ours - expected).norm() / expected.norm()).item()
        assert error < 1e-2, (tokens, error)
