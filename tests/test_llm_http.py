"""The native engine through `serve` and HTTP: LMI and OpenAI schemas against transformers."""

from __future__ import annotations

import concurrent.futures as futures
import json
import random
import time

import pytest
import requests

from conftest import ServeProcess, engine_stats
from tiny_models import build_model, default_model_dir, reference_greedy

WORDS = ("the model serves tokens quickly while requests join and leave the batch "
         "ünïcödé café 你好 🙂 newline\n tab\t end").split(" ")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def tiny_server(tiny_dir):
    (tiny_dir / "serving.properties").write_text(
        "option.num_kv_blocks=14\noption.kv_block_size=8\n"
        "option.max_rolling_batch_prefill_tokens=32\noption.max_rolling_batch_size=8\n"
        "job_queue_size=64\n")
    server = ServeProcess(tiny_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def lmi(server, inputs, timeout=120, **parameters):
    body = {"inputs": inputs, "parameters": parameters}
    response = requests.post(server.url("/invocations"), json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def stream_lines(server, body, path="/invocations"):
    with requests.post(server.url(path), json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        return [line for line in response.iter_lines(decode_unicode=False) if line]


def make_prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def test_sixteen_staggered_requests_match_transformers(tiny_server, tiny_dir, hf_tokenizer):
    rng = random.Random(3)
    prompts = [make_prompt(rng, rng.randint(2, 30)) for _ in range(16)]
    results: dict[int, dict] = {}

    def send(index, gap):
        time.sleep(index * gap)
        results[index] = lmi(tiny_server, prompts[index], max_new_tokens=12, details=True,
                             ignore_eos=True)

    token_prompts = [hf_tokenizer(p)["input_ids"] for p in prompts]
    expected = reference_greedy(tiny_dir, token_prompts, 12)
    # first arrivals spread over the running batch, then all at once: on a quiet machine the
    # spread requests may finish before the cache fills, the burst always overfills it
    for gap in (0.02, 0.0):
        before = engine_stats(tiny_server)
        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(16), [gap] * 16))
        after = engine_stats(tiny_server)
        got = [[t["id"] for t in results[i]["details"]["tokens"]] for i in range(16)]
        assert got == expected, gap
        assert ([results[i]["details"]["prompt_tokens"] for i in range(16)]
                == [len(p) for p in token_prompts])
    assert after["preemptions"] > before["preemptions"], "the KV budget should force preemption"
    assert after["chunked_prefill_steps"] > before["chunked_prefill_steps"]


def test_stream_concatenates_to_the_non_streamed_text(tiny_server, hf_tokenizer):
    rng = random.Random(11)
    for _ in range(3):
        prompt = make_prompt(rng, 6)
        whole = lmi(tiny_server, prompt, max_new_tokens=40, details=True, ignore_eos=True)
        lines = [json.loads(line) for line in stream_lines(tiny_server, {
            "inputs": prompt, "parameters": {"max_new_tokens": 40, "ignore_eos": True},
            "stream": True})]
        streamed = "".join(line["token"]["text"] for line in lines)
        assert streamed == whole["generated_text"]
        assert lines[-1]["generated_text"] == whole["generated_text"]
        ids = [t["id"] for t in whole["details"]["tokens"]]
        assert [line["token"]["id"] for line in lines] == ids
        assert whole["generated_text"] == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_sequences_end_the_text_before_them(tiny_server):
    prompt = "the model serves"
    free = lmi(tiny_server, prompt, max_new_tokens=40, ignore_eos=True)["generated_text"]
    assert len(free) > 12
    stop = free[8:12]
    expected = free[:free.index(stop)]
    stopped = lmi(tiny_server, prompt, max_new_tokens=40, ignore_eos=True, stop_sequences=[stop],
                  details=True)
    assert stopped["generated_text"] == expected
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    lines = [json.loads(x) for x in stream_lines(tiny_server, {
        "inputs": prompt, "stream": True,
        "parameters": {"max_new_tokens": 40, "ignore_eos": True, "stop_sequences": [stop]}})]
    assert "".join(line["token"]["text"] for line in lines) == expected
    assert lines[-1]["generated_text"] == expected


def test_list_inputs_and_return_full_text(tiny_server):
    results = requests.post(tiny_server.url("/invocations"), json={
        "inputs": ["the model", "a batch"], "parameters": {"max_new_tokens": 5}}, timeout=60).json()
    assert isinstance(results, list) and len(results) == 2
    single = lmi(tiny_server, "the model", max_new_tokens=5)
    assert results[0]["generated_text"] == single["generated_text"]
    full = lmi(tiny_server, "the model", max_new_tokens=5, return_full_text=True)
    assert full["generated_text"] == "the model" + single["generated_text"]


def test_length_and_eos_finish_reasons(tiny_server):
    details = lmi(tiny_server, "the", max_new_tokens=3, details=True, ignore_eos=True)["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 3


@pytest.mark.parametrize("parameters, field", [
    ({"temperature": -1}, "parameters.temperature"),
    ({"top_p": 0}, "parameters.top_p"),
    ({"top_p": 1.5}, "parameters.top_p"),
    ({"top_k": -5}, "parameters.top_k"),
    ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
    ({"repetition_penalty": 0}, "parameters.repetition_penalty"),
    ({"seed": -1}, "parameters.seed"),
    ({"stop_sequences": [1, 2]}, "parameters.stop_sequences"),
    ({"do_sample": "perhaps"}, "parameters.do_sample"),
])
def test_invalid_parameters_are_400_naming_the_parameter(tiny_server, parameters, field):
    response = requests.post(tiny_server.url("/invocations"),
                             json={"inputs": "hi", "parameters": parameters}, timeout=10)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "BadRequest" and field in body["message"], body
    assert lmi(tiny_server, "still fine", max_new_tokens=2)["generated_text"] is not None


def test_request_that_can_never_fit_is_400_naming_the_limit(tiny_server):
    info = requests.get(tiny_server.url(f"/models/{tiny_server.model_name()}"), timeout=10).json()
    response = requests.post(tiny_server.url("/invocations"), json={
        "inputs": "the model " * 20, "parameters": {"max_new_tokens": 100000}}, timeout=10)
    assert response.status_code == 400
    assert "max_model_len" in response.json()["message"], info
    nan = requests.post(tiny_server.url("/invocations"), data=b'{"inputs": "x", "parameters": '
                        b'{"temperature": NaN}}', headers={"Content-Type": "application/json"},
                        timeout=10)
    assert nan.status_code == 400


def test_seeded_sampling_is_reproducible_across_batch_mixes(tiny_server):
    params = {"do_sample": True, "temperature": 1.3, "top_k": 50, "top_p": 0.95, "seed": 1234,
              "max_new_tokens": 20, "ignore_eos": True}
    alone = lmi(tiny_server, "the model serves", **params)["generated_text"]
    with futures.ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(lmi, tiny_server, f"other prompt {i} " * (i + 1), max_new_tokens=25,
                             do_sample=True, ignore_eos=True) for i in range(5)]
        mixed = pool.submit(lmi, tiny_server, "the model serves", **params)
        [n.result() for n in noise]
        assert mixed.result()["generated_text"] == alone
    other_seed = lmi(tiny_server, "the model serves", **dict(params, seed=99))["generated_text"]
    assert other_seed != alone


def test_client_disconnect_frees_the_sequence_and_its_blocks(tiny_dir, tmp_path, serve_factory):
    import shutil

    model = tmp_path / "roomy"
    shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns("serving.properties"))
    tiny_server = serve_factory(model).start()               # room for a long generation
    body = {"inputs": "the model", "stream": True,
            "parameters": {"max_new_tokens": 500, "ignore_eos": True}}
    response = requests.post(tiny_server.url("/invocations"), json=body, stream=True, timeout=60)
    lines = response.iter_lines()
    next(lines)
    next(lines)
    assert engine_stats(tiny_server)["running"] >= 1
    response.close()                                  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = engine_stats(tiny_server)
        if stats["running"] == 0 and stats["kv_blocks_referenced"] == 0:
            break
        time.sleep(0.05)
    assert stats["running"] == 0 and stats["kv_blocks_referenced"] == 0, stats
    assert stats["requests_aborted"] >= 1


def test_chat_on_invocations_uses_the_template_and_counts_tokens(tiny_server, hf_tokenizer):
    messages = [{"role": "user", "content": "the model"}]
    response = requests.post(tiny_server.url("/invocations"), json={
        "messages": messages, "max_tokens": 6, "temperature": 0}, timeout=60)
    body = response.json()
    assert body["object"] == "chat.completion"
    expected_prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                       tokenize=True)
    expected_prompt = expected_prompt["input_ids"] if hasattr(expected_prompt, "keys") else expected_prompt
    assert body["usage"]["prompt_tokens"] == len(expected_prompt)
    assert body["usage"]["completion_tokens"] <= 6
    chunks = [json.loads(x) for x in stream_lines(tiny_server, {
        "messages": messages, "max_tokens": 6, "temperature": 0, "stream": True})]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == body["choices"][0]["message"]["content"]


def test_openai_client_streaming_and_not(tiny_server):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_server.url("/v1"), api_key="unused")
    messages = [{"role": "user", "content": "the model serves"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                           temperature=0)
    text = whole.choices[0].message.content
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert usage.completion_tokens == whole.usage.completion_tokens
    completion = client.completions.create(model="tiny", prompt="the model", max_tokens=5,
                                           temperature=0)
    assert completion.choices[0].text == lmi(tiny_server, "the model", max_new_tokens=5)["generated_text"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="the model", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == completion.choices[0].text


def test_sse_output_formatter(tiny_dir, serve_factory, tmp_path):
    import shutil

    model = tmp_path / "sse"
    shutil.copytree(tiny_dir, model)
    (model / "serving.properties").write_text("option.output_formatter=sse\n")
    server = serve_factory(model).start()
    lines = stream_lines(server, {"inputs": "the model", "stream": True,
                                  "parameters": {"max_new_tokens": 4, "ignore_eos": True}})
    assert all(line.startswith(b"data: ") for line in lines)
    events = [json.loads(line[6:]) for line in lines]
    assert len(events) == 4 and "generated_text" in events[-1]


@pytest.mark.slow
def test_smollm2_answers_paris_and_matches_transformers(serve_factory):
    model_dir = default_model_dir()
    assert model_dir is not None, "run `make default-model` first"
    server = serve_factory(model_dir).start(timeout=180)
    answer = requests.post(server.url("/invocations"), json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 20, "temperature": 0}, timeout=120).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a"]
    with futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda p: lmi(server, p, max_new_tokens=10, details=True,
                                              ignore_eos=True), prompts))
    expected = reference_greedy(model_dir, [tokenizer(p)["input_ids"] for p in prompts], 10)
    assert [[t["id"] for t in r["details"]["tokens"]] for r in results] == expected
