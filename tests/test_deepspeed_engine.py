"""The DeepSpeed engine's rolling batch in-process (one rank, real deepspeed.init_inference on the
CPU) against transformers' generate on the same weights."""

from __future__ import annotations

import json
import random

import pytest
import torch

from container.config.options_deepspeed import DeepSpeedOptions
from container.engines.deepspeed_batch import PaddedKVBatch
from container.engines.deepspeed_config import build_setup
from container.engines.deepspeed_model import load_model
from container.engines.deepspeed_rolling import DeepSpeedRollingBatch
from container.workers.protocol import SamplingParams
from tiny_models import build_model, reference_greedy

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("ds-tiny") / "llama", "llama")


def deepspeed_model(model_dir, options=None):
    setup = build_setup(DeepSpeedOptions.from_options(options or {}), 1, model_dir, "cpu",
                        "llama", torch.float32)
    return load_model(model_dir, setup, trust_remote_code=False)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    return deepspeed_model(tiny_llama)


def make_engine(model, regroup=True, max_rows=4, prefill_tokens=32, eos=()):
    batch = PaddedKVBatch(model, torch.device("cpu"), regroup=regroup)
    return DeepSpeedRollingBatch(batch, model.config.vocab_size, 512, list(eos), max_rows,
                                 prefill_tokens)


def random_prompts(vocab, count, seed=1):
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(3, 40))] for _ in range(count)]


def run(engine, requests, arrivals_per_step=2, trace=None):
    """requests: (id, prompt, SamplingParams) arriving a few per step; tokens per id."""
    tokens = {rid: [] for rid, _, _ in requests}
    reasons = {}
    pending = list(requests)
    while pending or engine.has_work():
        for _ in range(arrivals_per_step):
            if pending:
                engine.add_request(*pending.pop(0))
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                reasons[out.request_id] = out.finish_reason
        if trace is not None:
            plan = engine.last_plan
            trace.append((engine.batch.rows, len(engine.waiting),
                          bool(plan.keep and plan.prompts)))
    return tokens, reasons


@pytest.mark.parametrize("regroup", [True, False], ids=["rolling", "static"])
def test_greedy_matches_transformers(tiny_llama, tiny_model, regroup):
    prompts = random_prompts(tiny_model.config.vocab_size, 12)
    lengths = [8 + i % 5 for i in range(12)]
    engine = make_engine(tiny_model, regroup=regroup)
    trace = []
    tokens, reasons = run(engine, [(str(i), p, SamplingParams(max_new_tokens=n, ignore_eos=True))
                                   for i, (p, n) in enumerate(zip(prompts, lengths))], trace=trace)
    expected = [reference_greedy(tiny_llama, [p], n)[0] for p, n in zip(prompts, lengths)]
    assert [tokens[str(i)] for i in range(12)] == expected
    assert set(reasons.values()) == {"length"}
    joined_running = [joins for _, _, joins in trace]
    if regroup:
        assert max(rows for rows, _, _ in trace) == 4      # max_rolling_batch_size held,
        assert any(joined_running)                         # requests joined running batches
    else:
        assert not any(joined_running)                     # static: only an empty batch fills
    assert any(waiting for _, waiting, _ in trace)         # so requests had to wait
    # rows really shared steps (a static batch waits for its slowest row, so it shares less)
    assert engine.counters["steps"] < sum(lengths) / (3 if regroup else 1)
    assert engine.batch.rows == 0 and not engine.has_work()


def test_requests_join_a_running_batch(tiny_model):
    engine = make_engine(tiny_model, max_rows=8)
    engine.add_request("a", [5, 6, 7], SamplingParams(max_new_tokens=6, ignore_eos=True))
    engine.step()
    engine.add_request("b", list(range(10, 40)), SamplingParams(max_new_tokens=3, ignore_eos=True))
    joined = engine.step()
    assert sorted(o.request_id for o in joined) == ["a", "b"]   # b prefilled while a decodes
    assert engine.batch.pads == [26, 0] and engine.batch.width == 30


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_model):
    vocab = tiny_model.config.vocab_size
    params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50,
                            top_p=0.95, seed=1234, ignore_eos=True)
    prompt = random_prompts(vocab, 1, seed=5)[0]
    alone, _ = run(make_engine(tiny_model), [("x", prompt, params)])
    others = [(str(i), p, SamplingParams(max_new_tokens=9, do_sample=True, ignore_eos=True))
              for i, p in enumerate(random_prompts(vocab, 5, seed=9))]
    crowded, _ = run(make_engine(tiny_model), others[:3] + [("x", prompt, params)] + others[3:])
    assert crowded["x"] == alone["x"]
    reseeded, _ = run(make_engine(tiny_model), [("x", prompt, SamplingParams(
        max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=4321,
        ignore_eos=True))])
    assert reseeded["x"] != alone["x"]


def test_eos_and_abort(tiny_llama, tiny_model):
    prompt = [7, 8, 9, 10]
    expected = reference_greedy(tiny_llama, [prompt], 6)[0]
    engine = make_engine(tiny_model, eos=[expected[3]])
    tokens, reasons = run(engine, [("eos", prompt, SamplingParams(max_new_tokens=20))])
    assert tokens["eos"] == expected[:4] and reasons["eos"] == "eos_token"

    engine = make_engine(tiny_model)
    engine.add_request("keep", prompt, SamplingParams(max_new_tokens=20, ignore_eos=True))
    engine.add_request("drop", prompt[::-1], SamplingParams(max_new_tokens=20, ignore_eos=True))
    engine.step()
    assert engine.batch.rows == 2
    assert engine.abort_request("drop") and not engine.abort_request("drop")
    assert [o.request_id for o in engine.step()] == ["keep"]
    assert engine.batch.rows == 1 and engine.counters["requests_aborted"] == 1


def test_option_checkpoint_loads_weights_through_deepspeed(tiny_llama, tmp_path):
    """option.checkpoint: the model is built without weights and DeepSpeed loads them."""
    from safetensors.torch import load_file

    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tiny_llama / name).read_bytes())
    torch.save(load_file(tiny_llama / "model.safetensors"), model_dir / "weights.pt")
    (model_dir / "ds_inference_config.json").write_text(json.dumps(
        {"type": "ds_model", "checkpoints": ["weights.pt"], "version": 1.0}))
    model = deepspeed_model(model_dir, {"checkpoint": "ds_inference_config.json"})
    prompts = random_prompts(model.config.vocab_size, 3, seed=4)
    tokens, _ = run(make_engine(model), [(str(i), p, SamplingParams(max_new_tokens=8,
                                                                    ignore_eos=True))
                                         for i, p in enumerate(prompts)])
    assert [tokens[str(i)] for i in range(3)] == reference_greedy(tiny_llama, prompts, 8)
