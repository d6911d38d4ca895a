"""Speculative decoding on the GPU path: bf16 Triton kernels, the target's decode graphs beside
eager verification steps, the draft's own graphs. Needs an NVIDIA GPU; skipped cleanly where
there is none."""

from __future__ import annotations

import json

import pytest
import torch

from container.engine.model_config import ModelConfig
from container.workers.protocol import SamplingParams
from spec_helpers import make_engine, run_all, truncated_draft
from test_gpu import _prompts, gpu_model  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA GPU on this machine")]


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of tokens before each pair's first difference (bf16: verification's prefill
    kernels and decode's kernels may round a near tie differently)."""
    same = total = 0
    for x, y in zip(a, b):
        prefix = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), len(x))
        same, total = same + prefix, total + len(x)
    return same / total


def test_gpu_speculation_keeps_greedy_tokens(gpu_model, tmp_path):
    draft = truncated_draft(gpu_model, tmp_path / "draft", layers=1)
    prompts = _prompts(ModelConfig.from_dir(gpu_model).vocab_size, count=8)
    greedy = SamplingParams(max_new_tokens=48, ignore_eos=True, logprobs=True)
    common = dict(num_blocks=1024, block_size=16, max_seqs=16, budget=512, device="cuda",
                  max_len=2048, graphs=True)
    plain = [r["tokens"] for r in run_all(make_engine(gpu_model, **common),
                                          [(p, greedy) for p in prompts], 8)]
    for spec, draft_dir, low in (
            ('{"method": "ngram", "num_speculative_tokens": 4}', None, 0.0),
            (json.dumps({"model": str(gpu_model), "num_speculative_tokens": 4}), gpu_model, 0.9),
            (json.dumps({"model": str(draft), "num_speculative_tokens": 3}), draft, 0.0)):
        engine = make_engine(gpu_model, spec, draft_dir, **common)
        results = run_all(engine, [(p, greedy) for p in prompts], 8)
        got = [r["tokens"] for r in results]
        assert all(len(r["logprobs"]) == 48 for r in results)
        assert _agreement(got, plain) > 0.9, spec
        stats = engine.stats()
        assert stats["spec_draft_tokens"] > 0, spec
        assert stats["spec_acceptance_rate"] >= low, spec
        if engine.speculator.draft is not None:
            assert engine.speculator.draft.runner.graphs is not None
            assert engine.speculator.draft.blocks.num_referenced == 0
