"""The native engine in-process: block manager, scheduler and greedy tokens against transformers."""

from __future__ import annotations

import random

import pytest
import torch

from container.engine.block_manager import BlockManager
from container.engine.llm_engine import LLMEngine
from container.engine.model_config import ModelConfig
from container.engine.model_runner import ModelRunner
from container.engine.parallel import TensorParallel
from container.engine.scheduler import Scheduler
from container.engine.sequence import Sequence
from container.errors import StartupError
from container.workers.protocol import SamplingParams
from tiny_models import build_model, default_model_dir, reference_greedy


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


def make_engine(model_dir, num_blocks, block_size=4, max_seqs=8, budget=24, prefix=True,
                overlap=False):
    config = ModelConfig.from_dir(model_dir)
    runner = ModelRunner(config, str(model_dir), 512, torch.float32, torch.device("cpu"),
                         TensorParallel(), block_size)
    runner.allocate_kv_cache(num_blocks)
    scheduler = Scheduler(BlockManager(num_blocks, block_size, prefix), max_seqs, budget)
    return LLMEngine(runner, scheduler, config.eos_token_ids, 512, overlap=overlap)


def run_staggered(engine, prompts, max_new_tokens, arrivals_per_step=2, seed=None):
    results = {str(i): [] for i in range(len(prompts))}
    pending = list(enumerate(prompts))
    while pending or engine.has_work():
        for _ in range(arrivals_per_step):
            if pending:
                i, prompt = pending.pop(0)
                engine.add_request(str(i), prompt, SamplingParams(
                    max_new_tokens=max_new_tokens, ignore_eos=True, seed=seed))
        for out in engine.step():
            results[out.request_id].extend(out.new_token_ids)
    return [results[str(i)] for i in range(len(prompts))]


def random_prompts(vocab, count=16, low=3, high=40, seed=1):
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(low, high))] for _ in range(count)]
    if count > 9:
        prompts[5] = prompts[2][:20] + prompts[5]      # a shared prefix for the prefix cache
        prompts[9] = list(prompts[2])                  # and an identical prompt
    return prompts


@pytest.mark.parametrize("prefix_caching, overlap", [(True, False), (False, False), (True, True)],
                         ids=["prefix-cache", "no-prefix-cache", "overlapped-steps"])
def test_greedy_matches_transformers_under_preemption_and_chunking(tiny_llama, prefix_caching,
                                                                   overlap):
    prompts = random_prompts(ModelConfig.from_dir(tiny_llama).vocab_size)
    engine = make_engine(tiny_llama, num_blocks=40, budget=24, prefix=prefix_caching,
                         overlap=overlap)
    outputs = run_staggered(engine, prompts, 12)
    assert engine.scheduler.total_preemptions > 0          # the KV budget forced preemption
    assert engine.counters["chunked_prefill_steps"] > 0    # and long prompts were chunked
    assert engine.counters["mixed_steps"] > 0   # decodes ran as one batch beside prompt chunks
    if prefix_caching:
        assert engine.counters["cached_prompt_tokens"] > 0
    assert outputs == reference_greedy(tiny_llama, prompts, 12)
    assert engine.scheduler.blocks.num_referenced == 0        # every block came back
    assert all(c == 0 for c in engine.scheduler.blocks.ref_counts)


@pytest.mark.parametrize("architecture", ["qwen2", "mistral"])
def test_other_llama_family_architectures(tmp_path, architecture):
    model_dir = build_model(tmp_path / architecture, architecture)
    prompts = random_prompts(ModelConfig.from_dir(model_dir).vocab_size, count=4)
    outputs = run_staggered(make_engine(model_dir, num_blocks=200), prompts, 8)
    assert outputs == reference_greedy(model_dir, prompts, 8)


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers():
    model_dir = default_model_dir()
    if model_dir is None:
        pytest.fail("the default model is not built: run `make default-model`")
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    prompts = random_prompts(vocab, count=8, low=4, high=48, seed=7)
    engine = make_engine(model_dir, num_blocks=16, block_size=8, budget=32)
    outputs = run_staggered(engine, prompts, 8)
    assert engine.scheduler.total_preemptions > 0
    assert outputs == reference_greedy(model_dir, prompts, 8)


def test_unsupported_architecture_lists_supported(tmp_path):
    with pytest.raises(StartupError, match="supported: LlamaForCausalLM, MistralForCausalLM"):
        ModelConfig.from_dict({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


# block manager and scheduler with hand-made sequences (no model) -------------------------------
def seq(request_id, tokens, max_new=4):
    return Sequence(request_id, tokens, SamplingParams(max_new_tokens=max_new))


def test_block_manager_shares_and_frees_prefix_blocks():
    blocks = BlockManager(8, 4)
    first = seq("a", list(range(10)))
    blocks.allocate(first, 10)
    first.num_computed_tokens = 10
    blocks.mark_computed(first)                     # two full blocks published
    second = seq("b", list(range(9)) + [99])
    cached = blocks.cached_prefix(second)
    assert cached == first.block_ids[:2]
    blocks.take_cached(second, cached)
    assert second.num_computed_tokens == 8
    assert blocks.ref_counts[cached[0]] == 2
    blocks.free(first)
    assert blocks.ref_counts[cached[0]] == 1        # still held by the second sequence
    blocks.free(second)
    assert blocks.num_free == 8
    third = seq("c", list(range(12)))               # freed blocks still hit the cache
    assert blocks.cached_prefix(third) == cached


def test_cached_prefix_always_leaves_a_token_to_compute():
    blocks = BlockManager(8, 4)
    first = seq("a", list(range(8)))
    blocks.allocate(first, 8)
    first.num_computed_tokens = 8
    blocks.mark_computed(first)
    again = seq("b", list(range(8)))
    assert len(blocks.cached_prefix(again)) == 1    # the last block is recomputed


def test_scheduler_budget_chunks_prompts_and_respects_batch_size():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=10)
    for i, length in enumerate([25, 3, 3]):
        scheduler.add(seq(str(i), list(range(100 * i, 100 * i + length))))
    step = scheduler.schedule()
    assert [(s.seq.request_id, s.num_new_tokens) for s in step.scheduled] == [("0", 10)]
    assert not step.scheduled[0].samples
    for item in step.scheduled:
        scheduler.advance(item)
    step = scheduler.schedule()
    assert [(s.seq.request_id, s.num_new_tokens) for s in step.scheduled] == [("0", 10)]
    for item in step.scheduled:
        scheduler.advance(item)
    step = scheduler.schedule()                     # the rest of 0, then 1 joins; 2 must wait
    assert [(s.seq.request_id, s.num_new_tokens) for s in step.scheduled] == [("0", 5), ("1", 3)]
    assert all(s.samples for s in step.scheduled)
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 1


def test_scheduler_preempts_newest_when_blocks_run_out():
    scheduler = Scheduler(BlockManager(4, 4, enable_prefix_caching=False), 4, 64)
    old, new = seq("old", list(range(8))), seq("new", list(range(50, 58)))
    scheduler.add(old)
    scheduler.add(new)
    for item in scheduler.schedule().scheduled:    # both prefill: all 4 blocks used
        scheduler.advance(item)
        item.seq.token_ids.append(7)               # pretend each sampled a token
    step = scheduler.schedule()                    # "old" needs a fifth block
    assert step.num_preempted == 1
    assert [s.seq.request_id for s in step.scheduled] == ["old"]
    assert scheduler.waiting[0] is new and new.num_computed_tokens == 0
