"""TrtLlmEngine (the GenerationEngine over TensorRT-LLM's LLM) driven against the STAND-IN
tensorrt_llm package (tests/stand_in_tensorrt_llm: not TensorRT-LLM). The stand-in streams
the prompt's own tokens back, so every expected output here is known exactly."""

from __future__ import annotations

import time

import pytest

from container.engines.trtllm_engine import TrtLlmEngine
from container.workers.protocol import SamplingParams
from stand_in_tensorrt_llm.stand_in_helpers import (forget_stand_in, make_checkpoint, records,
                                                     use_stand_in)

MAX_INPUT, MAX_SEQ = 16, 48
EOS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("stand_in_checkpoint"))


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    record = tmp_path / "calls.jsonl"
    use_stand_in(monkeypatch, record)
    import tensorrt_llm

    assert tensorrt_llm.STAND_IN
    yield tensorrt_llm, record
    forget_stand_in()


@pytest.fixture
def engine(stand_in, checkpoint):
    lib, _ = stand_in
    llm = lib.LLM(model=str(checkpoint), skip_tokenizer_init=True,
                  build_config=lib.BuildConfig(max_input_len=MAX_INPUT, max_seq_len=MAX_SEQ))
    engine = TrtLlmEngine(llm, lib.SamplingParams, MAX_SEQ, MAX_INPUT, 800, [EOS, 4])
    yield engine
    engine.shutdown()


def run(engine: TrtLlmEngine, timeout: float = 10.0) -> dict[str, list]:
    """Step until idle: {request_id: [TokenOutput, ...]}."""
    seen: dict[str, list] = {}
    deadline = time.monotonic() + timeout
    while engine.has_work():
        assert time.monotonic() < deadline, "the engine did not finish"
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    return seen


def tokens(outputs) -> list[int]:
    return [t for out in outputs for t in out.new_token_ids]


def test_stand_in_streams_tokens_through_the_engine(engine, stand_in):
    engine.add_request("a", [10, 11, 12], SamplingParams(max_new_tokens=7), b"owner-a")
    outputs = run(engine)["a"]
    assert tokens(outputs) == [10, 11, 12, 10, 11, 12, 10]
    assert [o.finish_reason for o in outputs[:-1]] == [None] * (len(outputs) - 1)
    assert outputs[-1].finish_reason == "length"
    assert all(o.owner == b"owner-a" and o.num_prompt_tokens == 3 for o in outputs)
    call = records(stand_in[1], "generate_async")[0]
    assert call["streaming"] is True and call["has_loop"] is True     # created inside a loop
    assert call["sampling_params"]["end_id"] == EOS and call["sampling_params"]["top_k"] == 1
    assert call["sampling_params"]["stop_token_ids"] == [4]


def test_stand_in_many_requests_interleave(engine):
    prompts = {f"r{i}": [20 + i, 30 + i] for i in range(12)}
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, SamplingParams(max_new_tokens=5 + int(rid[1:])), b"o")
    seen = run(engine)
    assert set(seen) == set(prompts)
    for rid, prompt in prompts.items():
        n = 5 + int(rid[1:])
        assert tokens(seen[rid]) == [prompt[i % 2] for i in range(n)]
        assert seen[rid][-1].finish_reason == "length"
    stats = engine.stats()
    assert stats["running"] == 0 and stats["requests_finished"] == 12
    assert stats["generated_tokens"] == sum(5 + i for i in range(12))


def test_stand_in_eos_and_stop_tokens(engine):
    engine.add_request("eos", [10, EOS, 11], SamplingParams(max_new_tokens=9), b"o")
    engine.add_request("second_eos", [10, 4], SamplingParams(max_new_tokens=9), b"o")
    engine.add_request("stop", [10, 13], SamplingParams(max_new_tokens=9, stop_token_ids=[13]),
                       b"o")
    engine.add_request("ignore", [EOS], SamplingParams(max_new_tokens=4, ignore_eos=True), b"o")
    seen = run(engine)
    assert (tokens(seen["eos"]), seen["eos"][-1].finish_reason) == ([10, EOS], "eos_token")
    assert (tokens(seen["second_eos"]), seen["second_eos"][-1].finish_reason) == (
        [10, 4], "eos_token")
    assert (tokens(seen["stop"]), seen["stop"][-1].finish_reason) == ([10, 13], "stop_sequence")
    assert (tokens(seen["ignore"]), seen["ignore"][-1].finish_reason) == ([EOS] * 4, "length")


def test_stand_in_logprobs(engine):
    engine.add_request("lp", [7, 8], SamplingParams(max_new_tokens=3, logprobs=True), b"o")
    outputs = run(engine)["lp"]
    logprobs = [lp for o in outputs for lp in o.logprobs]
    assert logprobs == pytest.approx([-0.1, -0.2, -0.3])


def test_stand_in_abort_frees_the_request(engine, stand_in):
    engine.add_request("long", [10, 11], SamplingParams(max_new_tokens=30), b"o")
    first = []
    while not first:
        first = engine.step()
    assert engine.abort_request("long") is True
    assert engine.abort_request("long") is False        # unknown now
    assert not engine.has_work()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not records(stand_in[1], "abort"):
        time.sleep(0.01)
    assert records(stand_in[1], "abort"), "the library's request was not aborted"
    for _ in range(20):
        assert engine.step() == []                       # nothing more for an aborted request


def test_stand_in_prompt_over_max_input_len_fails_only_that_request(engine):
    engine.add_request("long", list(range(10, 10 + MAX_INPUT + 1)), SamplingParams(), b"o")
    engine.add_request("fine", [10], SamplingParams(max_new_tokens=2), b"o")
    seen = run(engine)
    failed = seen["long"][-1]
    assert failed.finish_reason == "error" and failed.new_token_ids == []
    assert "max_input_len=16" in failed.error
    assert tokens(seen["fine"]) == [10, 10]
    assert engine.stats()["requests_failed"] == 1


def test_stand_in_library_refusal_fails_only_that_request(engine):
    # prompt + max_new_tokens over the engine's max_seq_len: the library raises in generate_async
    engine.add_request("over", [10] * MAX_INPUT, SamplingParams(max_new_tokens=MAX_SEQ), b"o")
    out = run(engine)["over"][-1]
    assert out.finish_reason == "error" and "max_seq_len" in out.error
