"""OpenAI and LMI completeness through `serve`: log-probs (top k, echo, prompt), n / best_of,
sampling fields, refusals, and lm-evaluation-harness against its own transformers backend.

Every expectation comes from an independent reference on the same tiny weights: a transformers
forward pass (log-softmax of its logits), transformers generate, or lm-eval --model hf.
"""

from __future__ import annotations

import json
import math

import pytest
import requests

from conftest import ServeProcess
from tiny_models import build_model, reference_greedy

PROMPTS = ["the model serves tokens quickly", "requests join and leave the batch",
           "ünïcödé café 你好 newline"]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def server(tiny_dir):
    (tiny_dir / "serving.properties").write_text(
        "option.num_kv_blocks=96\noption.kv_block_size=8\n"
        "option.max_rolling_batch_prefill_tokens=24\noption.max_rolling_batch_size=8\n"
        "job_queue_size=64\n")
    process = ServeProcess(tiny_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def forward_logprobs(model, ids: list[int]):
    """[len(ids), vocab] log-softmax: row i scores the token at i + 1."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def post(server, path, body, status=200):
    response = requests.post(server.url(path), json=body, timeout=120)
    assert response.status_code == status, response.text
    return response.json()


def sse_events(server, path, body):
    with requests.post(server.url(path), json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    return [json.loads(line[len(b"data: "):]) for line in lines[:-1]]


def assert_top_matches(top: dict[str, float] | list, row, tokenizer, k: int):
    """The k best of the reference row, as (text, log-prob), against what the server sent."""
    values, ids = row.topk(k)
    expected = [(tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)]),
                 float(v)) for v, i in zip(values.tolist(), ids.tolist())]
    got = list(top.items()) if isinstance(top, dict) else [(e["token"], e["logprob"]) for e in top]
    got = {text: value for text, value in got}
    texts = [text for text, _ in expected]
    for text, value in expected:
        assert text in got, (text, got)
        if texts.count(text) == 1 and not text.endswith("\ufffd"):   # bytes of one character
            assert abs(got[text] - value) < TOL


# A. log-probabilities --------------------------------------------------------------------------
def test_echo_max_tokens_zero_gives_prompt_logprobs_of_a_forward_pass(server, tokenizer, hf_model):
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        body = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True,
                                                 "logprobs": 3, "temperature": 0})
        choice = body["choices"][0]
        assert choice["text"] == tokenizer.decode(ids)
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None
        reference = forward_logprobs(hf_model, ids)
        for i in range(1, len(ids)):
            assert abs(lp["token_logprobs"][i] - float(reference[i - 1, ids[i]])) < TOL
            assert_top_matches(lp["top_logprobs"][i], reference[i - 1], tokenizer, 3)
        assert body["usage"]["completion_tokens"] == 0


def test_generated_top_logprobs_match_a_forward_pass(server, tokenizer, hf_model):
    ids = tokenizer(PROMPTS[0])["input_ids"]
    body = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 6, "logprobs": 5,
                                             "temperature": 0, "ignore_eos": True})
    lp = body["choices"][0]["logprobs"]
    # the greedy continuation by transformers, then one forward pass over prompt + it
    out = ids + reference_greedy_ids(hf_model, ids, 6)
    reference = forward_logprobs(hf_model, out)
    assert len(lp["token_logprobs"]) == 6
    for j in range(6):
        row = reference[len(ids) + j - 1]
        assert abs(lp["token_logprobs"][j] - float(row[out[len(ids) + j]])) < TOL
        assert_top_matches(lp["top_logprobs"][j], row, tokenizer, 5)
        assert max(lp["top_logprobs"][j].values()) == lp["token_logprobs"][j]   # greedy


def test_chat_top_logprobs_match_a_forward_pass(server, tokenizer, hf_model):
    messages = [{"role": "user", "content": PROMPTS[1]}]
    body = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 4,
                                                  "logprobs": True, "top_logprobs": 4,
                                                  "temperature": 0, "ignore_eos": True})
    content = body["choices"][0]["logprobs"]["content"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = ids + reference_greedy_ids(hf_model, ids, 4)
    reference = forward_logprobs(hf_model, out)
    assert len(content) == 4
    for j, entry in enumerate(content):
        row = reference[len(ids) + j - 1]
        assert abs(entry["logprob"] - float(row[out[len(ids) + j]])) < TOL
        assert len(entry["top_logprobs"]) == 4
        assert_top_matches(entry["top_logprobs"], row, tokenizer, 4)
    # streamed: the same log-probs, piece by piece
    events = sse_events(server, "/v1/chat/completions", {
        "messages": messages, "max_tokens": 4, "logprobs": True, "top_logprobs": 4,
        "temperature": 0, "ignore_eos": True, "stream": True})
    streamed = [e for ev in events for c in ev["choices"] if c["logprobs"]
                for e in c["logprobs"]["content"]]
    assert [e["logprob"] for e in streamed] == [e["logprob"] for e in content]


def reference_greedy_ids(model, ids, count):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0].tolist()
    return out[len(ids):]


def test_lmi_details_top_n_tokens_and_prefill(server, tokenizer, hf_model):
    prompt = PROMPTS[2]
    ids = tokenizer(prompt)["input_ids"]
    body = post(server, "/invocations", {"inputs": prompt, "parameters": {
        "max_new_tokens": 3, "details": True, "top_n_tokens": 2, "decoder_input_details": True,
        "ignore_eos": True}})
    details = body["details"]
    out = ids + reference_greedy_ids(hf_model, ids, 3)
    reference = forward_logprobs(hf_model, out)
    assert [t["id"] for t in details["prefill"]] == ids
    assert details["prefill"][0]["log_prob"] is None
    for i in range(1, len(ids)):
        assert abs(details["prefill"][i]["log_prob"] - float(reference[i - 1, ids[i]])) < TOL
    for j, (token, top) in enumerate(zip(details["tokens"], details["top_tokens"])):
        row = reference[len(ids) + j - 1]
        assert token["id"] == out[len(ids) + j]
        values, best = row.topk(2)
        assert [t["id"] for t in top] == best.tolist()
        assert all(abs(t["log_prob"] - float(v)) < TOL for t, v in zip(top, values.tolist()))


def test_prompt_logprobs_survive_chunked_prefill_and_a_cached_prefix(server, tokenizer, hf_model):
    """A long prompt (several prefill chunks), asked twice: the second time its blocks are in
    the prefix cache, yet every prompt token must still be scored."""
    prompt = " ".join(PROMPTS * 4)
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) > 48
    reference = forward_logprobs(hf_model, ids)
    for _ in range(2):
        lp = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "echo": True,
                                               "logprobs": 1})["choices"][0]["logprobs"]
        got = lp["token_logprobs"][1:len(ids)]
        expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
        assert max(abs(a - b) for a, b in zip(got, expected)) < TOL


# lm-evaluation-harness ------------------------------------------------------------------------
def _write_tasks(directory):
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in [
        ("the model serves", [" tokens", " requests", " batches"], 0),
        ("requests join and", [" leave", " stay"], 0),
        ("a small test of", [" log", " likelihood", " scores", " here"], 2),
        ("café naïve", [" résumé", " emoji"], 1),
        ("def step(self):", [" return", " pass"], 0),
    ]]
    data = directory / "ll.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen_rows = [{"question": q, "answer": "x"} for q in
                ["the model serves", "import torch", "class Scheduler:", "requests join"]]
    gen_data = directory / "gen.jsonl"
    gen_data.write_text("".join(json.dumps(r) + "\n" for r in gen_rows))
    (directory / "tiny_ll.yaml").write_text(f"""task: tiny_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    (directory / "tiny_gen.yaml").write_text(f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen_data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""")


def test_lm_eval_local_completions_matches_lm_eval_hf(server, tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    _write_tasks(tmp_path)
    tasks = ["tiny_ll", "tiny_gen"]

    def evaluate(model, args):
        return lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks,
                                       task_manager=TaskManager(include_path=str(tmp_path)),
                                       log_samples=True, batch_size=1, device="cpu")

    ours = evaluate("local-completions", f"model=tiny,base_url={server.url('/v1/completions')},"
                    f"tokenizer={tiny_dir},tokenizer_backend=huggingface,num_concurrent=2,"
                    "max_retries=1,tokenized_requests=True")
    theirs = evaluate("hf", f"pretrained={tiny_dir},dtype=float32")
    ll_ours = [s["resps"] for s in ours["samples"]["tiny_ll"]]
    ll_theirs = [s["resps"] for s in theirs["samples"]["tiny_ll"]]
    assert len(ll_ours) == 5
    for a, b in zip(ll_ours, ll_theirs):
        for (score_a, greedy_a), (score_b, greedy_b) in zip([x[0] for x in a], [x[0] for x in b]):
            assert abs(score_a - score_b) < TOL
            assert greedy_a == greedy_b
    gen_ours = [s["filtered_resps"] for s in ours["samples"]["tiny_gen"]]
    gen_theirs = [s["filtered_resps"] for s in theirs["samples"]["tiny_gen"]]
    assert gen_ours == gen_theirs
    assert any(r[0] for r in gen_ours), "the generations should not all be empty"
    assert ours["results"]["tiny_ll"]["acc,none"] == theirs["results"]["tiny_ll"]["acc,none"]


# B. sampling fields ---------------------------------------------------------------------------
def reference_processed_greedy(model, ids, count, presence=0.0, frequency=0.0, bias=None,
                               banned_until=0, banned=()):
    """Greedy decoding by hand on transformers' logits with OpenAI's penalties and biases."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for step in range(count):
            logits = model(torch.tensor([out])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(out[len(ids):] or [0], dtype=torch.long),
                                    minlength=logits.numel()).float()
            if step == 0:
                counts.zero_()
            logits = logits - frequency * counts - presence * (counts > 0).float()
            for token, value in (bias or {}).items():
                logits[token] += value
            if step < banned_until:
                logits[list(banned)] = float("-inf")
            out.append(int(logits.argmax()))
    return out[len(ids):]


def completion_ids(server, body) -> list[tuple[list[int], str]]:
    """(token ids, finish_reason) of each choice, the ids through vLLM's
    return_tokens_as_token_ids (re-encoding text would be ambiguous)."""
    body = dict(body, logprobs=0, return_tokens_as_token_ids=True)
    choices = post(server, "/v1/completions", body)["choices"]
    return [([int(t.split(":")[1]) for t in c["logprobs"]["tokens"]], c["finish_reason"])
            for c in choices]


def test_presence_frequency_penalties_and_logit_bias_match_a_reference(server, tokenizer,
                                                                      hf_model):
    ids = tokenizer(PROMPTS[0])["input_ids"]
    plain = reference_greedy_ids(hf_model, ids, 24)
    changed = 0
    assert len(set(plain)) < len(plain), "the prompt should make the model repeat itself"
    for fields in [{"presence_penalty": 2.0}, {"frequency_penalty": 1.5},
                   {"presence_penalty": -0.5, "frequency_penalty": 2.0},
                   {"logit_bias": {str(plain[1]): -100, "40": 6.5}}]:
        [(got, _)] = completion_ids(server, {"prompt": ids, "max_tokens": 24, "temperature": 0,
                                             "ignore_eos": True, **fields})
        bias = {int(k): v for k, v in fields.get("logit_bias", {}).items()}
        expected = reference_processed_greedy(hf_model, ids, 24, fields.get("presence_penalty", 0),
                                              fields.get("frequency_penalty", 0), bias)
        assert got == expected, fields
        changed += expected != plain
    assert changed >= 3          # the fields change the text (the tiny model varies with the
    #                              repository's text, its tokenizer's corpus): the test can fail


def test_min_tokens_masks_eos_and_stop_token_ids(server, tokenizer, hf_model):
    ids = tokenizer(PROMPTS[1])["input_ids"]
    plain = reference_greedy_ids(hf_model, ids, 10)
    stop = plain[2]
    [(got, finish)] = completion_ids(server, {"prompt": ids, "max_tokens": 10, "temperature": 0,
                                              "ignore_eos": True, "stop_token_ids": [stop]})
    assert got == plain[:3] and finish == "stop"
    [(got, _)] = completion_ids(server, {"prompt": ids, "max_tokens": 10, "temperature": 0,
                                         "ignore_eos": True, "stop_token_ids": [stop],
                                         "min_tokens": 6})
    expected = reference_processed_greedy(hf_model, ids, 10, banned_until=6,
                                          banned=[stop, tokenizer.eos_token_id])
    cut = next((i + 1 for i, t in enumerate(expected) if t == stop), len(expected))
    assert got == expected[:cut] and len(got) > 3


def test_min_p_one_is_greedy_and_max_completion_tokens_and_user(server, tokenizer, hf_model):
    ids = tokenizer(PROMPTS[2])["input_ids"]
    [(got, _)] = completion_ids(server, {"prompt": ids, "max_tokens": 8, "temperature": 1.0,
                                         "min_p": 1.0, "seed": 5, "ignore_eos": True,
                                         "user": "someone"})
    assert got == reference_greedy_ids(hf_model, ids, 8)
    chat = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3,
        "ignore_eos": True, "user": "someone"})
    assert chat["usage"]["completion_tokens"] == 3


def test_n_samples_are_seeded_distinct_and_share_the_prompt_blocks(server, tokenizer):
    prompt = " ".join(PROMPTS * 2)          # several full KV blocks
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3,
            "ignore_eos": True}
    first = post(server, "/v1/completions", body)
    again = post(server, "/v1/completions", body)
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["text"] for c in again["choices"]]
    assert len(set(texts)) == 3
    # sample 0 of n=3 is the request with n=1 and the same seed
    alone = post(server, "/v1/completions", dict(body, n=1))
    assert alone["choices"][0]["text"] == texts[0]
    prompt_tokens = len(tokenizer(prompt)["input_ids"])
    assert first["usage"]["prompt_tokens"] == prompt_tokens
    assert first["usage"]["completion_tokens"] == 24
    # samples 1 and 2 found the prompt's full blocks in the prefix cache
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] >= 2 * 8 * (
        (prompt_tokens - 1) // 8)


def test_best_of_returns_the_samples_of_highest_cumulative_logprob(server):
    body = {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 1.0, "seed": 3,
            "ignore_eos": True, "logprobs": 0}
    drawn = post(server, "/v1/completions", dict(body, n=4))["choices"]
    scored = sorted(drawn, key=lambda c: sum(c["logprobs"]["token_logprobs"]), reverse=True)
    best = post(server, "/v1/completions", dict(body, n=2, best_of=4))["choices"]
    assert [c["text"] for c in best] == [c["text"] for c in scored[:2]]
    post(server, "/v1/completions", dict(body, n=3, best_of=2), status=400)
    post(server, "/v1/completions", dict(body, n=1, best_of=2, stream=True), status=400)


def test_streamed_n_two_with_usage(server):
    events = sse_events(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 5, "n": 2,
        "temperature": 1.0, "seed": 8, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}})
    text = {0: "", 1: ""}
    finished = set()
    for event in events[:-1]:
        for choice in event["choices"]:
            text[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finished.add(choice["index"])
    assert finished == {0, 1}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 10
    whole = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 5, "n": 2,
        "temperature": 1.0, "seed": 8, "ignore_eos": True})
    assert [text[0], text[1]] == [c["message"]["content"] for c in whole["choices"]]


def test_free_requests_are_unchanged_by_processed_neighbours(server, tokenizer, tiny_dir):
    """A batch mixing penalised, biased and log-prob requests with plain greedy ones: the
    plain ones get exactly transformers' greedy tokens."""
    import concurrent.futures as futures

    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    noisy = [{"presence_penalty": 1.0}, {"logit_bias": {"40": 50}}, {"top_logprobs": 3,
             "logprobs": True}, {"frequency_penalty": 2.0, "min_tokens": 4}]

    def plain(ids):
        return completion_ids(server, {"prompt": ids, "max_tokens": 10, "temperature": 0,
                                       "ignore_eos": True})[0][0]

    def other(fields):
        messages = [{"role": "user", "content": "noise"}]
        return post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 10,
                                                      "ignore_eos": True, **fields})

    with futures.ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(other, f) for f in noisy]
        got = list(pool.map(plain, prompts))
        [n.result() for n in noise]
    assert got == reference_greedy(tiny_dir, prompts, 10)


@pytest.mark.parametrize("path, body, field", [
    ("/v1/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]},
     "option.tool_call_parser"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/completions", {"use_beam_search": True}, "use_beam_search"),
    ("/v1/completions", {"suffix": "end"}, "suffix"),
    ("/v1/chat/completions", {"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"999999": 1}}, "logit_bias"),
    ("/v1/completions", {"presence_penalty": 3}, "presence_penalty"),
    ("/v1/completions", {"n": 17}, "n"),
    ("/invocations", {"parameters": {"n": 2}}, "parameters.n"),
    ("/invocations", {"parameters": {"num_beams": 2}}, "parameters.num_beams"),
    ("/invocations", {"parameters": {"top_n_tokens": 21}}, "parameters.top_n_tokens"),
])
def test_unimplemented_or_invalid_fields_are_a_400_naming_them(server, path, body, field):
    base = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
            "/v1/completions": {"prompt": "hi"}, "/invocations": {"inputs": "hi"}}[path]
    response = requests.post(server.url(path), json={**base, **body}, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["message"]


def test_off_values_of_unimplemented_fields_are_accepted(server):
    post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "response_format": {"type": "text"}, "tool_choice": "none", "parallel_tool_calls": True})


# C. structured output -------------------------------------------------------------------------
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"},
                                      "colour": {"enum": ["red", "green", "blue"]}},
     "required": ["ok", "colour"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2,
     "maxItems": 4},
    {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 2, "items": {
        "type": "string", "pattern": "^[a-z]{1,4}$"}}}, "required": ["tags"],
     "additionalProperties": False},
]


def chat_text(server, content, **fields):
    body = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": content}], "max_tokens": 80, **fields})
    return body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_outputs_validate(server, schema):
    jsonschema = pytest.importorskip("jsonschema")
    for seed in range(3):
        text, finish = chat_text(server, "give me json", temperature=1.0, seed=seed,
                                 response_format={"type": "json_schema", "json_schema": {
                                     "name": "x", "schema": schema, "strict": True}})
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), schema)


def test_regex_choice_grammar_and_json_object(server):
    import re

    text, _ = chat_text(server, "code", guided_regex="[ab]{3}-[0-9]{2}", temperature=1.0, seed=1)
    assert re.fullmatch("[ab]{3}-[0-9]{2}", text), text
    text, _ = chat_text(server, "pick", structured_outputs={"choice": ["yes", "no", "maybe"]})
    assert text in ("yes", "no", "maybe")
    text, _ = chat_text(server, "g", guided_grammar='root ::= "x" ("y" | "z")+ "."',
                        max_tokens=12, temperature=1.0, seed=4)
    assert re.fullmatch(r"x[yz]+\.", text) or len(text) >= 2 and re.fullmatch(r"x[yz]+", text)
    text, finish = chat_text(server, "j", response_format={"type": "json_object"},
                             max_tokens=60, temperature=0.7, seed=2)
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    completion = post(server, "/v1/completions", {"prompt": "the", "max_tokens": 10,
                                                   "guided_regex": "[0-9]{4}"})
    assert re.fullmatch("[0-9]{4}", completion["choices"][0]["text"])
    lmi_body = post(server, "/invocations", {"inputs": "the", "parameters": {
        "max_new_tokens": 10, "guided_choice": ["alpha", "beta"]}})
    assert lmi_body["generated_text"] in ("alpha", "beta")


def test_streamed_structured_output(server):
    import re

    events = sse_events(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "s"}], "max_tokens": 20, "stream": True,
        "guided_regex": "(ab|cd){2,3}!", "temperature": 1.0, "seed": 9})
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert re.fullmatch("(ab|cd){2,3}!", text), text


def test_constrained_and_free_requests_share_a_batch(server, tokenizer, tiny_dir):
    import concurrent.futures as futures

    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]

    def plain(ids):
        return completion_ids(server, {"prompt": ids, "max_tokens": 10, "temperature": 0,
                                       "ignore_eos": True})[0][0]

    def constrained(seed):
        return chat_text(server, "c", guided_json=SCHEMAS[seed % len(SCHEMAS)], seed=seed,
                         temperature=1.0)

    with futures.ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(constrained, s) for s in range(4)]
        got = list(pool.map(plain, prompts))
        [n.result() for n in noise]
    assert got == reference_greedy(tiny_dir, prompts, 10)


@pytest.mark.parametrize("body, words", [
    ({"guided_regex": "(a"}, ["guided_regex", "does not compile"]),
    ({"guided_json": {"type": "nonsense"}}, ["guided_json", "nonsense"]),
    ({"response_format": {"type": "json_schema"}}, ["response_format.json_schema"]),
    ({"response_format": {"type": "yaml"}}, ["response_format"]),
    ({"guided_regex": "a", "guided_choice": ["b"]}, ["only one structured output"]),
    ({"guided_choice": []}, ["guided_choice"]),
])
def test_bad_grammars_are_a_400_with_the_reason(server, body, words):
    response = requests.post(server.url("/v1/chat/completions"), json={
        "messages": [{"role": "user", "content": "hi"}], **body}, timeout=30)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["message"]


# D. tool calling ------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
                                              "maximum": 14}},
    "required": ["zone"], "additionalProperties": False}}}


def test_required_and_named_tool_choice_give_valid_calls(server):
    jsonschema = pytest.importorskip("jsonschema")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(3):
        for choice, parallel in [("required", True), ("required", False),
                                 ({"type": "function", "function": {"name": "get_time"}}, True)]:
            body = post(server, "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER, TIME],
                "tool_choice": choice, "parallel_tool_calls": parallel, "max_tokens": 120,
                "temperature": 1.0, "seed": seed})
            choice_out = body["choices"][0]
            if parallel and choice_out["finish_reason"] == "length":
                continue          # a random model may keep adding calls until max_tokens
            assert choice_out["finish_reason"] == "tool_calls", choice_out
            calls = choice_out["message"]["tool_calls"]
            assert calls and (parallel or len(calls) == 1)
            for call in calls:
                assert call["type"] == "function" and call["id"].startswith("call_")
                name = call["function"]["name"]
                if isinstance(choice, dict):
                    assert name == "get_time"
                jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[name])


def test_streamed_tool_call_argument_deltas(server):
    events = sse_events(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "time?"}], "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 80, "stream": True, "temperature": 1.0, "seed": 2})
    deltas = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert set(json.loads(arguments)) == {"city", "unit"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_is_plain_text_and_bad_tools_are_400(server):
    body = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
        "tool_choice": "none", "max_tokens": 3, "ignore_eos": True})
    assert "tool_calls" not in body["choices"][0]["message"]
    for bad, words in [({"tools": [{"type": "function"}]}, "tools.0"),
                       ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {
                           "name": "nope"}}}, "no tool named"),
                       ({"tools": [WEATHER], "tool_choice": "required",
                         "response_format": {"type": "json_object"}}, "cannot be combined")]:
        response = requests.post(server.url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "hi"}], **bad}, timeout=30)
        assert response.status_code == 400 and words in response.json()["message"], response.text


@pytest.mark.parametrize("parser, text, content, calls", [
    ("hermes", 'Sure.<tool_call>{"name": "get_time", "arguments": {"zone": 2}}</tool_call>',
     "Sure.", [("get_time", {"zone": 2})]),
    ("hermes", "no call here", "no call here", []),
    ("llama3_json", '{"name": "get_time", "parameters": {"zone": 1}}; '
                    '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}',
     None, [("get_time", {"zone": 1}), ("get_weather", {"city": "Oslo", "unit": "c"})]),
    ("mistral", 'x [TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": 3}}]', "x",
     [("get_time", {"zone": 3})]),
    ("pythonic", '[get_weather(city="Rome", unit="f"), get_time(zone=-1)]', None,
     [("get_weather", {"city": "Rome", "unit": "f"}), ("get_time", {"zone": -1})]),
    ("pythonic", "[broken(", "[broken(", []),
])
def test_tool_call_parsers(parser, text, content, calls):
    from container.frontend.tool_calls import ToolPlan

    plan = ToolPlan([WEATHER, TIME], "auto", True, parser)
    got_content, got_calls = plan.calls(text)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] \
        == calls


def test_other_engines_refuse_what_only_the_native_engine_implements():
    from types import SimpleNamespace

    from container.errors import ServingError
    from container.frontend.llm_routes import check_engine_fields
    from container.workers.protocol import SamplingParams, StructuredOutput

    for engine in ("deepspeed", "trtllm"):
        ctx = SimpleNamespace(info={"engine": engine})
        check_engine_fields(ctx, SamplingParams(logprobs=True, temperature=0.5, top_k=3))
        for fields, named in [({"min_p": 0.1}, "min_p"), ({"top_logprobs": 2}, "top_logprobs"),
                              ({"structured": StructuredOutput("regex", "a")}, "structured"),
                              ({"logit_bias": {1: 2.0}}, "logit_bias")]:
            with pytest.raises(ServingError) as caught:
                check_engine_fields(ctx, SamplingParams(**fields))
            assert caught.value.code == 400 and named in caught.value.message
    check_engine_fields(SimpleNamespace(info={"engine": "native"}), SamplingParams(min_p=0.5))
