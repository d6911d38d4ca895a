"""Sampling against exact distributions, and against transformers' logits processors."""

from __future__ import annotations

import math

import pytest
import torch

from container.engine.sampler import SamplingBatch, apply_repetition_penalty, filter_top_k_top_p, sample

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])


def batch(rows: int, temperature=1.0, top_k=0, top_p=1.0, penalty=1.0, seeds=None, step=0,
          tokens=None):
    seeds = list(range(rows)) if seeds is None else seeds
    return SamplingBatch.build([{
        "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "repetition_penalty": penalty, "seed": seeds[i], "step": step,
        "tokens": tokens[i] if tokens else [], "logprobs": False} for i in range(rows)],
        torch.device("cpu"))


def exact_distribution(logits, temperature, top_k, top_p):
    """The distribution transformers' warpers define: temperature, then top-k, then the
    smallest set of the remaining tokens whose renormalised mass reaches top_p."""
    probs = torch.softmax(logits / temperature, dim=-1)
    allowed = probs.argsort(descending=True)
    if top_k:
        allowed = allowed[:top_k]
    renormalised = probs[allowed] / probs[allowed].sum()
    keep, mass = [], 0.0
    for token, p in zip(allowed.tolist(), renormalised.tolist()):
        keep.append(token)
        mass += p
        if top_p < 1.0 and mass >= top_p:
            break
    target = torch.zeros_like(probs)
    target[keep] = probs[keep]
    return target / target.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.8), (0.9, 4, 0.7)])
def test_sampling_matches_the_exact_distribution(temperature, top_k, top_p):
    draws = 40_000
    logits = LOGITS.expand(draws, -1).clone()
    tokens, _ = sample(logits, batch(draws, temperature, top_k, top_p))
    counts = torch.bincount(tokens, minlength=len(LOGITS)).double()
    target = exact_distribution(LOGITS, temperature, top_k, top_p).double()
    assert counts[target == 0].sum() == 0, "a filtered-out token was drawn"
    expected = target * draws
    chi2 = (((counts - expected) ** 2) / expected)[target > 0].sum().item()
    dof = int((target > 0).sum().item()) - 1
    # p < 1e-4 critical values of chi-square for dof 0..5
    critical = {0: 0.0, 1: 15.1, 2: 18.4, 3: 21.1, 4: 23.5, 5: 25.7}[dof]
    assert chi2 <= critical + 1e-9, (chi2, counts.tolist(), expected.tolist())


def test_same_seed_and_step_give_the_same_token_in_any_batch():
    logits = torch.randn(1, 50)
    alone, _ = sample(logits, batch(1, seeds=[777], step=5))
    crowd_logits = torch.cat([torch.randn(7, 50), logits, torch.randn(3, 50)])
    crowd, _ = sample(crowd_logits, batch(11, seeds=[1, 2, 3, 4, 5, 6, 7, 777, 9, 10, 11], step=5))
    assert crowd[7] == alone[0]
    steps = [sample(logits, batch(1, seeds=[777], step=s))[0].item() for s in range(40)]
    assert len(set(steps)) > 1                  # later positions draw fresh numbers


def test_greedy_rows_ignore_randomness():
    logits = torch.randn(4, 30)
    tokens, _ = sample(logits, batch(4, temperature=0.0))
    assert tokens.tolist() == logits.argmax(-1).tolist()


def test_filters_match_transformers():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(3, 200)
    for k, p in ((10, 1.0), (0, 0.9), (25, 0.6)):
        ours = filter_top_k_top_p(logits.clone(), batch(3, top_k=k, top_p=p))
        theirs = logits.clone()
        if k:
            theirs = TopKLogitsWarper(k)(None, theirs)
        if p < 1.0:
            theirs = TopPLogitsWarper(p)(None, theirs)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), (k, p)
    history = [[5, 7, 7, 199], [0], [3, 4]]
    ours = apply_repetition_penalty(logits.clone(), batch(3, penalty=1.3, tokens=history))
    for row, tokens in enumerate(history):
        theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([tokens]), logits[row:row + 1].clone())
        assert torch.allclose(ours[row], theirs[0])


def test_logprobs_are_the_raw_distribution():
    logits = torch.randn(2, 40)
    rows = SamplingBatch.build([{"temperature": 0.0, "top_k": 0, "top_p": 1.0,
                                 "repetition_penalty": 1.0, "seed": 1, "step": 0, "tokens": [],
                                 "logprobs": True}] * 2, torch.device("cpu"))
    tokens, logprobs = sample(logits, rows)
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.allclose(logprobs, expected)
    assert math.isclose(float(logprobs.exp().sum()), float(expected.exp().sum()), rel_tol=1e-6)
