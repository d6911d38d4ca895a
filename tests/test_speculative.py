"""Speculative decoding (option.speculative_config): proposers, the rejection sampler, the
engine's verification steps and what `serve` exposes, against transformers and exact
probabilities."""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import random
import re
import shutil
import time

import pytest
import requests
import torch

from conftest import ServeProcess, engine_stats, error_line, run_serve_to_exit
from spec_helpers import make_engine, run_all, truncated_draft
from test_engine import random_prompts
from tiny_models import build_model, reference_greedy

from container.config.options_speculative import parse_speculative_config
from container.engine.model_config import ModelConfig
from container.engine.sampler import SamplingBatch, sampling_row
from container.engine.speculative import rejection
from container.engine.speculative.ngram import TokenHistory, propose_ngram
from container.workers.protocol import SamplingParams

NGRAM = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}'


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("spec-target") / "llama", "llama")


@pytest.fixture(scope="module")
def draft(target, tmp_path_factory):
    return truncated_draft(target, tmp_path_factory.mktemp("spec-draft") / "draft")


def draft_spec(path, k=3) -> str:
    return json.dumps({"model": str(path), "num_speculative_tokens": k})


# proposers and options ------------------------------------------------------------------------
def test_ngram_lookup_copies_what_followed_the_latest_match():
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 1, 2, 3]
    assert propose_ngram(tokens, 2, 3, 1) == [7, 8]          # the latest 1 2 3, not the first
    assert propose_ngram(tokens, 10, 3, 1) == [7, 8, 4, 1, 2, 3]
    assert propose_ngram([5, 6, 7, 5], 3, 4, 1) == [6, 7, 5]  # falls back to n = 1
    assert propose_ngram([5, 6, 7, 5], 3, 4, 2) == []         # no 2-gram repeats
    assert propose_ngram([4], 3, 2, 1) == []


def test_ngram_lookup_against_a_plain_search():
    def plain(tokens, k, longest, shortest):
        for n in range(min(longest, len(tokens) - 1), shortest - 1, -1):
            for i in range(len(tokens) - n - 1, -1, -1):
                if tokens[i:i + n] == tokens[-n:]:
                    return tokens[i + n:i + n + k]
        return []

    rng = random.Random(0)
    history = TokenHistory()
    grown: list[int] = []
    for _ in range(2000):
        tokens = [rng.randrange(4) for _ in range(rng.randint(1, 40))]
        k, longest = rng.randint(1, 5), rng.randint(1, 5)
        shortest = rng.randint(1, longest)
        assert propose_ngram(tokens, k, longest, shortest) == plain(tokens, k, longest, shortest)
        grown += tokens[:3]                      # the incremental array sees the same tokens
        assert propose_ngram(history.update(grown), k, longest, shortest) == \
            plain(grown[-4096:], k, longest, shortest)


@pytest.mark.parametrize("text, message", [
    ('{"method": "eagle", "num_speculative_tokens": 3, "model": "x"}', "not supported"),
    ('{"method": "medusa", "num_speculative_tokens": 3}', "not supported"),
    ('{"method": "lookahead", "num_speculative_tokens": 3}', "unknown method"),
    ('{"method": "ngram", "num_speculative_tokens": 0}', "out of range"),
    ('{"method": "ngram", "num_speculative_tokens": 17}', "out of range"),
    ('{"method": "ngram"}', "num_speculative_tokens is required"),
    ('{"method": "draft_model", "num_speculative_tokens": 2}', "needs \"model\""),
    ('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 5, '
     '"prompt_lookup_max": 2}', "above"),
    ('{"model": "x", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2}', "one rank"),
    ('{"model": "x", "num_speculative_tokens": 2, "acceptance_method": "typical"}',
     "not supported"),
    ('{"num_speculative_tokens": 2}', "say which method"),
    ('ngram', "not a JSON object"),
])
def test_bad_speculative_configs_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_speculative_config(text)


def test_speculative_config_shapes():
    spec = parse_speculative_config('{"model": "org/draft", "num_speculative_tokens": 3}')
    assert (spec.method, spec.model, spec.num_speculative_tokens) == ("draft_model", "org/draft", 3)
    spec = parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 4}')
    assert (spec.prompt_lookup_max, spec.prompt_lookup_min) == (4, 1)
    assert parse_speculative_config("") is None


# the rejection sampler, with a known p and q ------------------------------------------------
P = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
Q = torch.tensor([0.05, 0.10, 0.40, 0.05, 0.30, 0.10])


def _first_tokens(rows: int = 20000) -> torch.Tensor:
    """The first emitted token of `rows` independent one-draft verifications, drafts drawn
    from Q, target P (a sampled request: temperature 1)."""
    generator = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(Q, rows, replacement=True, generator=generator)
    logits = P.log().repeat(2 * rows, 1)                      # draft row, bonus row
    batch_rows = [sampling_row(SamplingParams(do_sample=True, seed=seed), seed, 0, list)
                  for seed in range(rows) for _ in range(2)]
    batch = SamplingBatch.build(batch_rows, torch.device("cpu"))
    candidates = [t for d in drafts.tolist() for t in (d, -1)]
    verified = rejection.verify(logits, batch, [1] * rows, candidates,
                                list(range(0, 2 * rows, 2)), Q.repeat(rows, 1))
    return torch.tensor([tokens[0] for tokens in verified.tokens])


def _tv(tokens: torch.Tensor, p: torch.Tensor) -> float:
    empirical = torch.bincount(tokens, minlength=len(p)).float() / len(tokens)
    return 0.5 * float((empirical - p).abs().sum())


def test_rejection_sampler_keeps_the_target_distribution(monkeypatch):
    # 20000 draws: the sampling error of the TV distance is about 0.005
    assert _tv(_first_tokens(), P) < 0.02
    assert _tv(_first_tokens(), Q) > 0.3                      # a test that could tell
    # the classic mistake, resampling from p after a rejection, is caught by the same check
    monkeypatch.setattr(rejection, "residual", lambda p, q: p)
    assert _tv(_first_tokens(), P) > 0.05


def test_point_mass_drafts_accept_with_the_target_probability():
    rows = 20000
    logits = P.log().repeat(2 * rows, 1)
    batch = SamplingBatch.build([sampling_row(SamplingParams(do_sample=True, seed=s), s, 0, list)
                                 for s in range(rows) for _ in range(2)], torch.device("cpu"))
    verified = rejection.verify(logits, batch, [1] * rows, [2, -1] * rows, [], None)
    assert abs(sum(verified.accepted) / rows - float(P[2])) < 0.01
    assert _tv(torch.tensor([t[0] for t in verified.tokens]), P) < 0.02


# the engine in-process ------------------------------------------------------------------------
def test_greedy_equals_no_speculation_under_preemption_and_chunking(target, draft):
    prompts = random_prompts(ModelConfig.from_dir(target).vocab_size)
    expected = reference_greedy(target, prompts, 12)
    greedy = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True, top_logprobs=2)
    plain = run_all(make_engine(target, num_blocks=30), [(p, greedy) for p in prompts], 4)
    for spec, draft_dir in ((NGRAM, None), (draft_spec(draft), draft),
                            (draft_spec(target), target)):
        engine = make_engine(target, spec, draft_dir, num_blocks=30)
        results = run_all(engine, [(p, greedy) for p in prompts], arrivals_per_step=4)
        assert [r["tokens"] for r in results] == expected, spec
        for got, want in zip(results, plain):                # each emitted token's log-probs
            assert got["logprobs"] == pytest.approx(want["logprobs"], abs=1e-4)
            assert [[t for t, _ in top] for top in got["top"]] == \
                [[t for t, _ in top] for top in want["top"]]
        assert engine.scheduler.total_preemptions > 0, spec
        assert engine.counters["chunked_prefill_steps"] > 0
        stats = engine.stats()
        assert stats["spec_draft_tokens"] > 0
        if draft_dir == target:
            assert stats["spec_acceptance_rate"] == 1.0
        assert engine.scheduler.blocks.num_referenced == 0
        if engine.speculator.draft is not None:        # the draft's cache came back too
            assert engine.speculator.draft.blocks.num_referenced == 0


PROCESSORS = [
    dict(do_sample=True, temperature=0.8, seed=7),
    dict(do_sample=True, temperature=1.2, top_k=5, top_p=0.9, seed=11),
    dict(do_sample=True, temperature=0.7, min_p=0.05, typical_p=0.9, seed=3),
    dict(do_sample=True, temperature=1.0, repetition_penalty=1.3, seed=5),
    dict(do_sample=True, presence_penalty=0.8, frequency_penalty=0.4, seed=9),
    dict(logit_bias={5: 4.0, 17: -100.0}, min_tokens=6, repetition_penalty=1.2),
    dict(logprobs=True, top_logprobs=2, do_sample=True, seed=13),
    dict(logprobs=True, top_logprobs=1),
]


def test_ngram_gives_the_tokens_and_logprobs_of_no_speculation(target):
    """With point-mass proposals verification draws each position with the sampler's own
    seeded noise, so every processor and seed gives exactly what it gives without speculation."""
    prompts = random_prompts(ModelConfig.from_dir(target).vocab_size, count=len(PROCESSORS) * 2)
    requests_ = [(p, SamplingParams(max_new_tokens=14, ignore_eos=True, **PROCESSORS[i % 8]))
                 for i, p in enumerate(prompts)]
    plain = run_all(make_engine(target), requests_)
    engine = make_engine(target, '{"method": "ngram", "num_speculative_tokens": 3, '
                         '"prompt_lookup_max": 2}')
    spec = run_all(engine, requests_)
    assert engine.stats()["spec_accepted_tokens"] > 0
    assert [r["tokens"] for r in spec] == [r["tokens"] for r in plain]
    for (_, sampling), a, b in zip(requests_, spec, plain):
        if not sampling.logprobs:
            continue           # (rows of a batch that wants log-probs carry them all)
        assert len(a["logprobs"]) == len(b["logprobs"]) == 14
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
        assert [[t for t, _ in top] for top in a["top"]] == \
            [[t for t, _ in top] for top in b["top"]]


def _exact_joint(target, prompt, top_k, length):
    """transformers' probabilities of every continuation of `length` tokens under
    temperature 1 and top-k."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    out = {(): 1.0}
    with torch.no_grad():
        for _ in range(length):
            grown = {}
            for prefix, prob in out.items():
                logits = model(torch.tensor([prompt + list(prefix)])).logits[0, -1]
                values, ids = logits.topk(top_k)
                for v, t in zip(values.softmax(0).tolist(), ids.tolist()):
                    grown[prefix + (t,)] = prob * v
            out = grown
    return out


def test_draft_model_sampling_keeps_the_target_distribution(target, draft):
    """Tokens 2 and 3 go through verification (token 1 is the prefill's): their joint with
    token 1 over many seeds matches the exact target probabilities."""
    prompt = [11, 42, 97, 11, 42]
    top_k, samples = 3, 3000
    exact = _exact_joint(target, prompt, top_k, 3)
    engine = make_engine(target, draft_spec(draft, k=2), draft, num_blocks=2400, max_seqs=256,
                         budget=2048)
    sampling = [SamplingParams(max_new_tokens=3, ignore_eos=True, do_sample=True, top_k=top_k,
                               seed=seed) for seed in range(samples)]
    results = run_all(engine, [(prompt, s) for s in sampling], arrivals_per_step=256)
    stats = engine.stats()
    assert 0.05 < stats["spec_acceptance_rate"] < 0.98      # q differs from p, and helps
    counts: dict[tuple, int] = {}
    for r in results:
        counts[tuple(r["tokens"])] = counts.get(tuple(r["tokens"]), 0) + 1
    assert set(counts) <= set(exact)
    tv = 0.5 * sum(abs(counts.get(key, 0) / samples - p) for key, p in exact.items())
    # sampling error alone: about 0.5 * sum(sqrt(p / n)) * 0.8
    noise = 0.4 * sum(math.sqrt(p / samples) for p in exact.values())
    assert tv < 2.5 * noise, (tv, noise)


# through serve ------------------------------------------------------------------------------
SMALL_CACHE = ("option.num_kv_blocks=14\noption.kv_block_size=8\n"
               "option.max_rolling_batch_prefill_tokens=32\noption.max_rolling_batch_size=8\n"
               "job_queue_size=64\n")
WORDS = ("the model serves tokens quickly while requests join and leave the batch "
         "the model the model serves").split(" ")


def _serve(model_dir, spec: str) -> ServeProcess:
    (model_dir / "serving.properties").write_text(
        SMALL_CACHE + f"option.speculative_config={spec}\n")
    return ServeProcess(model_dir).start()


@pytest.fixture(scope="module")
def hf_tokenizer(target):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)


def _sixteen_staggered_then_at_once(server, target, hf_tokenizer):
    rng = random.Random(5)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(16)]
    token_prompts = [hf_tokenizer(p)["input_ids"] for p in prompts]
    expected = reference_greedy(target, token_prompts, 12)
    results = {}

    def send(index, gap):
        time.sleep(index * gap)
        reply = requests.post(server.url("/invocations"), timeout=120, json={
            "inputs": prompts[index], "parameters": {"max_new_tokens": 12, "details": True,
                                                     "ignore_eos": True}})
        assert reply.status_code == 200, reply.text
        results[index] = [t["id"] for t in reply.json()["details"]["tokens"]]

    before = engine_stats(server)
    # staggered over the running batch, then a burst (which always overfills the small cache)
    for gap in (0.02, 0.0):
        results.clear()
        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(16), [gap] * 16))
        assert [results[i] for i in range(16)] == expected, gap
    after = engine_stats(server)
    assert after["preemptions"] > before["preemptions"], "the KV budget should force preemption"
    assert after["chunked_prefill_steps"] > before["chunked_prefill_steps"]
    return after


def _metric(server, name: str) -> float:
    text = requests.get(server.url("/metrics"), timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def _stream_and_structured(server):
    """Several tokens per step stream as they do one by one; a constrained request sharing
    verification steps keeps its grammar."""
    prompt = "the model the model serves the model"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 30, "ignore_eos": True,
                                             "details": True}}
    whole = requests.post(server.url("/invocations"), json=body, timeout=60).json()
    lines = [json.loads(line) for line in requests.post(
        server.url("/invocations"), json={**body, "stream": True}, timeout=60).iter_lines()
        if line]
    assert [line["token"]["id"] for line in lines] == [t["id"] for t in whole["details"]["tokens"]]
    assert "".join(line["token"]["text"] for line in lines) == whole["generated_text"]

    def constrained(_):
        return requests.post(server.url("/invocations"), timeout=60, json={
            "inputs": "the", "parameters": {"max_new_tokens": 10, "guided_regex": "[0-9]{4}"}})

    with futures.ThreadPoolExecutor(4) as pool:
        free = [pool.submit(requests.post, server.url("/invocations"), json=body, timeout=60)
                for _ in range(3)]
        texts = [r.json()["generated_text"] for r in pool.map(constrained, range(2))]
        assert all(f.result().status_code == 200 for f in free)
    assert all(re.fullmatch("[0-9]{4}", text) for text in texts), texts


def test_serve_ngram_greedy_matches_transformers(target, hf_tokenizer):
    server = _serve(target, NGRAM)
    try:
        stats = _sixteen_staggered_then_at_once(server, target, hf_tokenizer)
        assert stats["spec_draft_tokens"] > 0
        _stream_and_structured(server)           # 30 tokens of a repetitive prompt
        stats = engine_stats(server)
        assert stats["spec_accepted_tokens"] > 0
        assert _metric(server, "serve_spec_draft_tokens_total") == stats["spec_draft_tokens"]
        assert 0 < _metric(server, "serve_spec_acceptance_rate") <= 1
    finally:
        server.stop()


def test_serve_self_draft_accepts_everything(target, hf_tokenizer):
    server = _serve(target, draft_spec(target, k=3))
    try:
        stats = _sixteen_staggered_then_at_once(server, target, hf_tokenizer)
        assert stats["spec_acceptance_rate"] == 1.0
        assert _metric(server, "serve_spec_acceptance_rate") == 1.0
        assert _metric(server, "serve_spec_tokens_per_step") > 2.0
        assert "draft" in server.log and "k=3" in server.log
    finally:
        server.stop()


def test_serve_truncated_draft_greedy_matches_transformers(target, draft, hf_tokenizer):
    server = _serve(target, draft_spec(draft, k=2))
    try:
        stats = _sixteen_staggered_then_at_once(server, target, hf_tokenizer)
        assert 0 < stats["spec_acceptance_rate"] < 1
    finally:
        server.stop()


def _refused(model_dir, spec: str, extra: str = "") -> str:
    (model_dir / "serving.properties").write_text(
        f"option.speculative_config={spec}\n{extra}")
    code, _, err = run_serve_to_exit(model_dir)
    assert code != 0
    return error_line(err)


def test_serve_refuses_bad_speculative_configs_in_one_line(target, tmp_path):
    line = _refused(target, '{"method": "eagle", "model": "x", "num_speculative_tokens": 2}')
    assert "option.speculative_config" in line and "eagle" in line
    line = _refused(target, '{"method": "ngram", "num_speculative_tokens": 40}')
    assert "num_speculative_tokens=40" in line and "1..16" in line
    line = _refused(target, NGRAM, "option.pipeline_parallel_degree=2\n")
    assert "pipeline_parallel_degree=1" in line
    other_vocab = build_model(tmp_path / "other", "llama", vocab_size=640)
    line = _refused(target, draft_spec(other_vocab))
    assert "vocabulary of 640" in line and "tokenizer" in line
    (target / "serving.properties").unlink()


def test_serve_tp2_draft_model_greedy_matches_transformers(target, draft, hf_tokenizer, tmp_path):
    """Ranks 1..N-1 get the verification plan like any other (drafts are its token rows); the
    draft runs on rank 0 alone."""
    model_dir = tmp_path / "tp2"
    shutil.copytree(target, model_dir, ignore=shutil.ignore_patterns("serving.properties"))
    (model_dir / "serving.properties").write_text(
        SMALL_CACHE + "option.tensor_parallel_degree=2\n"
        f"option.speculative_config={draft_spec(draft, k=3)}\n")
    server = ServeProcess(model_dir).start(timeout=180)
    try:
        stats = _sixteen_staggered_then_at_once(server, target, hf_tokenizer)
        assert stats["spec_accepted_tokens"] > 0
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ["engine=DeepSpeed\n", "option.rolling_batch=trtllm\n"])
def test_other_engines_refuse_speculative_config(tmp_path, engine):
    from container.config.loader import load_config
    from container.errors import StartupError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "serving.properties").write_text(engine + f"option.speculative_config={NGRAM}\n")
    with pytest.raises(StartupError, match="implemented by the native engine"):
        load_config(tmp_path, env={})
