"""The sampler's logit processors against transformers' own warpers on the same logits:
min_p (MinPLogitsWarper), typical_p (TypicalLogitsWarper), OpenAI's presence / frequency
penalties (by hand), logit_bias and min_tokens (sampling_row), packed top-k log-probs."""

from __future__ import annotations

import torch

from container.engine.sampler import (SamplingBatch, filter_min_p_typical, pack_logprobs,
                                      sample, sampling_row, unpack_logprobs)
from container.workers.protocol import SamplingParams

VOCAB = 50


def rows(count, **fields):
    base = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
            "seed": 1, "step": 0, "tokens": [], "logprobs": False}
    return [dict(base, **fields) for _ in range(count)]


def finite_mask(logits):
    return torch.isfinite(logits)


def test_min_p_and_typical_p_keep_what_transformers_keeps():
    from transformers.generation.logits_process import MinPLogitsWarper, TypicalLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, VOCAB) * 3
    for min_p in (0.05, 0.3, 0.9):
        batch = SamplingBatch.build(rows(6, min_p=min_p), torch.device("cpu"))
        ours = filter_min_p_typical(logits.clone(), batch)
        theirs = MinPLogitsWarper(min_p)(None, logits.clone())
        assert torch.equal(finite_mask(ours), finite_mask(theirs))
    for typical in (0.2, 0.5, 0.95):
        batch = SamplingBatch.build(rows(6, typical_p=typical), torch.device("cpu"))
        ours = filter_min_p_typical(logits.clone(), batch)
        theirs = TypicalLogitsWarper(typical)(None, logits.clone())
        assert torch.equal(finite_mask(ours), finite_mask(theirs)), typical


def test_presence_and_frequency_penalties_count_only_output_tokens():
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    history = [3, 3, 7, 9, 9, 9]             # 3 prompt tokens, then 3 generated
    row = sampling_row(params, seed=1, step=3, tokens=lambda: history)
    assert row["output"] == [9, 9, 9]
    logits = torch.zeros(1, VOCAB)
    row["temperature"] = 0.0
    batch = SamplingBatch.build([row], torch.device("cpu"))
    from container.engine.sampler import apply_counted_penalties

    out = apply_counted_penalties(logits, batch)
    assert out[0, 9] == -(0.5 + 3 * 0.25) and out[0, 3] == 0 and out[0, 7] == 0


def test_logit_bias_and_min_tokens_steer_greedy_choice():
    logits = torch.zeros(2, VOCAB)
    logits[:, 5] = 10.0                       # the eos token here, and the argmax
    params = SamplingParams(logit_bias={11: 20.0}, min_tokens=2)
    biased = sampling_row(params, 1, 0, lambda: [], eos_token_ids=[5])
    free = sampling_row(SamplingParams(), 1, 0, lambda: [])
    tokens, _ = sample(logits, SamplingBatch.build([biased, free], torch.device("cpu")))
    assert tokens.tolist() == [11, 5]
    only_min = sampling_row(SamplingParams(min_tokens=2), 1, 1, lambda: [], eos_token_ids=[5])
    later = sampling_row(SamplingParams(min_tokens=2), 1, 2, lambda: [], eos_token_ids=[5])
    tokens, _ = sample(logits, SamplingBatch.build([only_min, later], torch.device("cpu")))
    assert tokens[0] != 5 and tokens[1] == 5


def test_packed_top_logprobs_round_trip():
    torch.manual_seed(1)
    logprobs = torch.log_softmax(torch.randn(3, VOCAB), dim=-1)
    targets = torch.tensor([4, 0, 49])
    packed = pack_logprobs(logprobs, targets, 5).tolist()
    for r in range(3):
        value, top = unpack_logprobs(packed[r], 5)
        assert value == float(logprobs[r, targets[r]])
        values, ids = logprobs[r].topk(5)
        assert top == list(zip(ids.tolist(), values.tolist()))


def test_uniform_noise_stays_below_one_so_zero_probabilities_never_win():
    """float32 noise of exactly 1.0 made the exponential race divide 0 by 0 (NaN wins)."""
    from container.engine.sampler import uniform_noise

    seeds = torch.arange(4096, dtype=torch.int64) * 7919
    noise = uniform_noise(seeds, torch.zeros_like(seeds), 4096)
    assert float(noise.max()) < 1.0 and float(noise.min()) > 0.0
    logits = torch.full((64, 4096), float("-inf"))
    logits[:, :3] = 0.0                        # only three tokens possible
    batch = SamplingBatch.build(rows(64, seed=0), torch.device("cpu"))
    batch.seed = torch.arange(64, dtype=torch.int64) * 104729
    batch.step = torch.arange(64, dtype=torch.int64)
    tokens, _ = sample(logits, batch)
    assert int(tokens.max()) < 3
