"""Multi-LoRA serving in the native engine, end to end through `serve` over HTTP.

The oracle is transformers + peft with one adapter applied alone; our server mixes three
adapters (different ranks, alpha, rsLoRA and target modules) and the base model in the same
steps, with fewer device slots (max_loras=2) and host copies (max_cpu_loras=2) than adapters,
so slots are swapped and host copies re-read while requests run.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import pytest
import requests

from conftest import REPO, ServeProcess, run_serve_to_exit
from lora_helpers import make_adapter, make_adapters, reference_greedy
from s3_helpers import client, moto, s3_env, upload_dir  # noqa: F401  (fixture)
from tiny_models import build_model

NEW_TOKENS = 8
HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
CHOICES = [None, "alpha", "beta", "gamma"]
PROPERTIES = ("option.enable_lora=true\noption.max_loras=2\noption.max_cpu_loras=2\n"
              "option.max_lora_rank=8\noption.num_kv_blocks=96\noption.kv_block_size=8\n"
              "option.max_rolling_batch_size=8\noption.max_rolling_batch_prefill_tokens=64\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    # 6 query heads over 3 KV heads: at TP=2 the ranks hold uneven pieces of q, k and v
    return build_model(tmp_path_factory.mktemp("lora-base") / "m", "llama",
                       num_attention_heads=6, num_key_value_heads=3, hidden_size=96,
                       intermediate_size=160)


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    return make_adapters(base, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def prompts(base):
    """12 prompts as text and token ids; two share a prefix (prefix cache across adapters)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    rng = random.Random(3)
    words = ["model", "adapter", "serves", "tokens", "batch", "step", "café", "join", "leave",
             "rank", "slot", "cache"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(12)]
    texts[2] = " ".join(words)                  # beta; long enough for full KV blocks
    texts[5] = texts[2] + " and more"          # the same prefix under alpha
    texts[7] = texts[2]                        # the same prompt under gamma
    texts[8] = texts[2]                        # and under the base model
    return [(t, tokenizer.encode(t).ids) for t in texts]


@pytest.fixture(scope="module")
def expected(base, adapters, prompts):
    """choice -> the oracle's greedy tokens for every prompt."""
    ids = [p for _, p in prompts]
    out = {name: reference_greedy(base, adapters[name] if name else None, ids, NEW_TOKENS)
           for name in CHOICES}
    for name in CHOICES[1:]:     # each adapter really changes the model
        assert out[name] != out[None], name
    return out


def serving_dir(base, adapters, root, extra: str = ""):
    """The model dir: alpha and beta from option.adapters, gamma from its adapters/ folder."""
    target = root / "model"
    shutil.copytree(base, target)
    shutil.copytree(adapters["gamma"], target / "adapters" / "gamma")
    (target / "serving.properties").write_text(
        PROPERTIES + f"option.adapters=alpha={adapters['alpha']},beta={adapters['beta']}\n"
        + extra)
    return target


@pytest.fixture(scope="module")
def server(base, adapters, tmp_path_factory, moto):
    process = ServeProcess(serving_dir(base, adapters, tmp_path_factory.mktemp("tp1")),
                           env=s3_env(moto.endpoint, SERVING_DOWNLOAD_DIR=str(
                               tmp_path_factory.mktemp("downloads")))).start(timeout=180)
    yield process
    process.stop()


def _ask(server, index: int, text: str, choice: str | None, stream: bool) -> list[int]:
    """Greedy ids for one prompt, naming the adapter each of the four ways in turn."""
    body = {"inputs": text, "parameters": {"max_new_tokens": NEW_TOKENS, "details": True,
                                           "ignore_eos": True}}
    headers, path = {}, "/invocations"
    way = index % 3
    if choice and way == 0:
        body["adapters"] = choice
    elif choice and way == 1:
        headers[HEADER] = choice
    elif choice:
        path = f"/invocations?adapter={choice}"
    if stream:
        body["stream"] = True
        reply = requests.post(server.url(path), json=body, headers=headers, timeout=120,
                              stream=True)
        assert reply.status_code == 200, reply.text
        lines = [json.loads(line) for line in reply.iter_lines() if line]
        return [line["token"]["id"] for line in lines]
    reply = requests.post(server.url(path), json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    return [t["id"] for t in reply.json()["details"]["tokens"]]


def staggered(server, prompts) -> dict[int, list[int]]:
    """12 requests arriving 40 ms apart, mixing all adapters and the base model."""
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def one(i):
        try:
            results[i] = _ask(server, i, prompts[i][0], CHOICES[i % 4], stream=i % 2 == 1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
        time.sleep(0.04)
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


def check(results, expected):
    for i, tokens in sorted(results.items()):
        assert tokens == expected[CHOICES[i % 4]][i], (i, CHOICES[i % 4])


def test_mixed_batch_matches_peft_with_each_adapter_alone(server, prompts, expected):
    check(staggered(server, prompts), expected)
    stats = requests.get(server.url("/metrics"), timeout=10).text
    assert 'serve_lora_requests_total{adapter="beta"}' in stats
    assert 'serve_lora_tokens_total{adapter="gamma",kind="generated"}' in stats
    assert 'serve_lora_adapters_resident{where="device"}' in stats
    assert 'serve_lora_adapter_load_seconds_count{adapter="alpha",stage="host"}' in stats


@pytest.mark.parametrize("backend", ["lmi", "openai-completions"])
def test_load_generator_spreads_requests_over_adapters(server, base, backend, tmp_path):
    """`python -m container.bench --adapters` (the device benchmark's multi-LoRA load) names
    the adapters in turn: the per-adapter request counters grow by exactly its share."""
    import subprocess
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    def counts():
        text = requests.get(server.url("/metrics"), timeout=10).text
        return {s.labels["adapter"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "serve_lora_requests_total"}

    before = counts()
    subprocess.run([sys.executable, "-m", "container.bench", "--url", server.base,
                    "--backend", backend, "--tokenizer", str(base), "--num-prompts", "6",
                    "--input-len", "4", "--output-len", "2", "--concurrency", "3",
                    "--warmup", "0", "--adapters", "alpha,gamma", "--model", "model",
                    "--results-dir", str(tmp_path), "--label", "spread"],
                   check=True, capture_output=True, timeout=120, cwd=REPO)
    after = counts()
    grown = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert grown.get("alpha") == 3 and grown.get("gamma") == 3, grown
    assert not any(v for k, v in grown.items() if k not in ("alpha", "gamma")), grown


def test_lmi_list_takes_one_adapter_per_input_and_openai_model_names_one(server, prompts,
                                                                        expected):
    picks = ["gamma", "", "alpha", "beta"]
    reply = requests.post(server.url("/invocations"), timeout=120, json={
        "inputs": [prompts[i][0] for i in range(4)], "adapters": picks,
        "parameters": {"max_new_tokens": NEW_TOKENS, "details": True, "ignore_eos": True}})
    assert reply.status_code == 200, reply.text
    for i, (item, pick) in enumerate(zip(reply.json(), picks)):
        assert [t["id"] for t in item["details"]["tokens"]] == expected[pick or None][i]
    # OpenAI completions with token ids: `model` names the adapter
    reply = requests.post(server.url("/v1/completions"), timeout=120, json={
        "model": "beta", "prompt": prompts[5][1], "max_tokens": NEW_TOKENS, "ignore_eos": True,
        "temperature": 0,
        "logprobs": 0, "return_tokens_as_token_ids": True})
    assert reply.status_code == 200, reply.text
    tokens = reply.json()["choices"][0]["logprobs"]["tokens"]
    assert [int(t.split(":")[1]) for t in tokens] == expected["beta"][5]


def test_register_use_and_unregister_while_others_stream(server, base, prompts, expected,
                                                         moto, tmp_path):
    """delta comes from s3:// (moto), is registered, used and unregistered over HTTP while
    requests of the other adapters stream."""
    delta_dir = make_adapter(base, tmp_path / "delta", 6, 6, True, ["v_proj", "gate_proj"], 11)
    s3 = client(moto.endpoint)
    s3.create_bucket(Bucket="lora-adapters")
    upload_dir(s3, delta_dir, "lora-adapters", "delta/")
    want = reference_greedy(base, delta_dir, [prompts[1][1]], NEW_TOKENS)[0]
    background: dict[int, list[int]] = {}

    def stream(i):
        background[i] = _ask(server, 0, prompts[i][0], CHOICES[i % 4], stream=True)

    threads = [threading.Thread(target=stream, args=(i,)) for i in (1, 2, 3, 5, 6, 7)]
    for thread in threads:
        thread.start()
    reply = requests.post(server.url("/adapters"), timeout=60,
                          params={"name": "delta", "src": "s3://lora-adapters/delta/"})
    assert reply.status_code == 200, reply.text
    listed = requests.get(server.url("/adapters"), timeout=10).json()["adapters"]
    assert {a["name"] for a in listed} == {"alpha", "beta", "gamma", "delta"}
    assert _ask(server, 0, prompts[1][0], "delta", stream=False) == want
    reply = requests.delete(server.url("/adapters/delta"), timeout=60)
    assert reply.status_code == 200, reply.text
    for thread in threads:
        thread.join(120)
    for i, tokens in background.items():
        assert tokens == expected[CHOICES[i % 4]][i], i
    gone = requests.post(server.url("/invocations"), timeout=30, json={
        "inputs": "x", "adapters": "delta"})
    assert gone.status_code == 404 and "delta" in gone.json()["message"]


@pytest.mark.parametrize("how", ["field", "header", "query", "openai"])
def test_unknown_adapter_is_404_naming_it(server, how):
    body, headers, path = {"inputs": "hello"}, {}, "/invocations"
    if how == "field":
        body["adapters"] = "nope"
    elif how == "header":
        headers[HEADER] = "nope"
    elif how == "query":
        path += "?adapter=nope"
    else:
        path, body = "/v1/completions", {"model": "nope", "prompt": "hello", "max_tokens": 2}
    reply = requests.post(server.url(path), json=body, headers=headers, timeout=30)
    assert reply.status_code == 404, reply.text
    assert "'nope'" in reply.json()["message"] and "alpha" in reply.json()["message"]


def test_bad_adapter_inputs_are_clear_4xx_and_the_server_stays_healthy(server, base, tmp_path):
    def post(path, **kwargs):
        return requests.post(server.url(path), timeout=60, **kwargs)

    reply = post("/invocations", json={"inputs": ["a", "b"], "adapters": ["alpha"]})
    assert reply.status_code == 400 and "adapters" in reply.json()["message"]
    reply = post("/invocations", json={"inputs": "a", "adapters": 7})
    assert reply.status_code == 400 and "adapters" in reply.json()["message"]
    reply = post("/adapters", params={"name": "alpha", "src": "/x"})
    assert reply.status_code == 409 and "alpha" in reply.json()["message"]
    reply = post("/adapters", params={"name": "missing", "src": str(tmp_path / "none")})
    assert reply.status_code == 400 and "src" in reply.json()["message"]
    reply = post("/adapters", params={"name": "nosrc"})
    assert reply.status_code == 400 and "src" in reply.json()["message"]
    # made for another base model: hidden size 64 instead of 96
    other = build_model(tmp_path / "other", "llama")
    wrong = make_adapter(other, tmp_path / "wrong", 4, 8, False, ["q_proj"], 5)
    reply = post("/adapters", params={"name": "wrong", "src": str(wrong)})
    assert reply.status_code == 400, reply.text
    message = reply.json()["message"]
    assert "q_proj" in message and "[r, 96]" in message and "\n" not in message
    big = make_adapter(base, tmp_path / "big", 16, 16, False, ["q_proj"], 6)
    reply = post("/adapters", params={"name": "big", "src": str(big)})
    assert reply.status_code == 400 and "max_lora_rank=8" in reply.json()["message"]
    assert requests.get(server.url("/adapters/nope"), timeout=10).status_code == 404
    assert requests.delete(server.url("/adapters/nope"), timeout=10).status_code == 404
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200
    names = {a["name"] for a in requests.get(server.url("/adapters"), timeout=10)
             .json()["adapters"]}
    assert names == {"alpha", "beta", "gamma"}


def test_tp2_mixed_batch_matches_peft(base, adapters, prompts, expected, tmp_path):
    process = ServeProcess(serving_dir(base, adapters, tmp_path,
                                       "option.tensor_parallel_degree=2\n")).start(timeout=240)
    try:
        check(staggered(process, prompts), expected)
    finally:
        process.stop()


def test_each_rank_keeps_only_its_slices_of_a_and_b(base, adapters):
    """At TP=2, column-parallel layers split B by output rows and row-parallel ones A by input
    columns; the two ranks' pieces put together are the adapter's matrices."""
    import torch
    from safetensors.torch import load_file

    from container.config.options_native import NativeOptions
    from container.engine.model_config import ModelConfig
    from container.engine.models.llama import LlamaForCausalLM
    from container.engine.parallel import TensorParallel
    from container.engine.lora.attach import attach_lora
    from container.engine.lora.adapter import load_adapter, read_config

    config = ModelConfig.from_dir(base)
    options = NativeOptions.from_options({"enable_lora": "true"})
    full = load_file(str(adapters["beta"] / "adapter_model.safetensors"))
    scale = read_config("beta", adapters["beta"]).scaling(8)
    per_rank = []
    for rank in range(2):
        model = LlamaForCausalLM(config, 64, TensorParallel(rank, 2))
        _, layers = attach_lora(model, set(options.lora_target_modules), 2, 8, torch.float32)
        per_rank.append(load_adapter("beta", adapters["beta"], model, layers, 8, torch.float32))
    prefix = "base_model.model.model.layers.0."
    q0, q1 = (w["model.layers.0.self_attn.qkv_proj"][0] for w in per_rank)
    assert torch.equal(q0[0], q1[0])                                   # A whole on each rank
    assert torch.allclose(torch.cat([q0[1], q1[1]]),
                          full[prefix + "self_attn.q_proj.lora_B.weight"] * scale)
    d0, d1 = (w["model.layers.0.mlp.down_proj"][0] for w in per_rank)
    assert torch.equal(torch.cat([d0[0], d1[0]], dim=1),
                       full[prefix + "mlp.down_proj.lora_A.weight"])
    assert d0[0].shape[1] < 160 and torch.equal(d0[1], d1[1])         # B whole on each rank


def test_bad_lora_options_stop_start_up_with_one_line(base, tmp_path):
    target = tmp_path / "m"
    shutil.copytree(base, target)
    (target / "serving.properties").write_text("option.enable_lora=true\n"
                                               "option.lora_target_modules=q_proj,lm_head\n")
    code, out, err = run_serve_to_exit(target, timeout=120)
    assert code != 0
    assert "option.lora_target_modules" in err and "lm_head" in err


def test_prefix_cache_never_shares_blocks_between_adapters():
    from container.engine.block_manager import BlockManager
    from container.engine.sequence import Sequence
    from container.workers.protocol import SamplingParams

    blocks = BlockManager(16, 4)
    tokens = list(range(1, 14))
    first = Sequence("a", tokens, SamplingParams())
    first.cache_salt = 7
    blocks.allocate(first, len(tokens))
    first.num_computed_tokens = len(tokens)
    blocks.mark_computed(first)
    same = Sequence("b", tokens, SamplingParams())
    same.cache_salt = 7
    assert len(blocks.cached_prefix(same)) == 3
    for salt in (0, 8):                    # the base model, another adapter
        other = Sequence(f"c{salt}", tokens, SamplingParams())
        other.cache_salt = salt
        assert blocks.cached_prefix(other) == []


def test_smollm2_with_three_adapters_matches_peft(tmp_path_factory):
    """The real checkpoint: one request per adapter and one of the base, all in flight at once."""
    from tiny_models import default_model_dir

    source = default_model_dir()
    if source is None:
        pytest.skip("the SmolLM2 checkpoint is not built (make; or set SERVE_DEFAULT_MODEL)")
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("smollm2-lora")
    made = {name: make_adapter(source, root / name, rank, alpha, rslora, targets, seed)
            for seed, (name, rank, alpha, rslora, targets) in enumerate(
                [("alpha", 4, 8, False, ["q_proj", "v_proj"]),
                 ("beta", 8, 16, True, ["o_proj", "gate_proj", "down_proj"]),
                 ("gamma", 2, 2, False, ["k_proj", "up_proj"])], start=20)}
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    texts = ["The capital of France is", "def add(a, b):", "Once upon a time",
             "The capital of France is"]
    choices = [None, "alpha", "beta", "gamma"]
    want = [reference_greedy(source, made[c] if c else None, [tokenizer.encode(t).ids], 6)[0]
            for t, c in zip(texts, choices)]
    assert want[3] != want[0]
    target = root / "model"
    target.mkdir()
    (target / "serving.properties").write_text(
        f"option.model_id={source}\noption.enable_lora=true\noption.max_loras=3\n"
        "option.max_lora_rank=8\noption.num_kv_blocks=64\noption.max_rolling_batch_size=4\n"
        "option.adapters=" + ",".join(f"{n}={p}" for n, p in made.items()) + "\n")
    process = ServeProcess(target).start(timeout=240)
    try:
        got: dict[int, list[int]] = {}

        def one(i):
            body = {"inputs": texts[i], "parameters": {"max_new_tokens": 6, "details": True,
                                                       "ignore_eos": True}}
            if choices[i]:
                body["adapters"] = choices[i]
            reply = requests.post(process.url("/invocations"), json=body, timeout=120)
            got[i] = [t["id"] for t in reply.json()["details"]["tokens"]]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [got.get(i) for i in range(4)] == want
    finally:
        process.stop()


def test_adapter_needing_a_module_not_enabled_is_refused_naming_it(base, adapters):
    import torch

    from container.engine.lora.adapter import load_adapter
    from container.engine.lora.attach import attach_lora
    from container.engine.lora.errors import LoRAError
    from container.engine.model_config import ModelConfig
    from container.engine.models.llama import LlamaForCausalLM

    model = LlamaForCausalLM(ModelConfig.from_dir(base), 64)
    _, layers = attach_lora(model, {"q_proj", "v_proj"}, 2, 8, torch.float32)
    assert set(layers) >= {"model.layers.0.self_attn.qkv_proj"}
    assert not any("mlp" in path for path in layers)       # no target there: left unwrapped
    load_adapter("alpha", adapters["alpha"], model, layers, 8, torch.float32)   # q and v only
    with pytest.raises(LoRAError) as refused:
        load_adapter("beta", adapters["beta"], model, layers, 8, torch.float32)
    assert "option.lora_target_modules" in refused.value.message
    assert "'down_proj'" in refused.value.message       # the first one missing, sorted
