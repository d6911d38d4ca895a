"""Model families of the native engine (Qwen3, Llama 3.2 tied, Qwen2.5, Mistral sliding window,
Mixtral, Qwen3-MoE, Qwen2-MoE with a shared expert, Gemma 2, Gemma 3, Phi-3 with LongRoPE on part of each head) and the transformers path for every other architecture (Falcon, GPT-2),
each a tiny random checkpoint made with transformers' own config classes, against transformers'
generate on the same weights (greedy, fp32): in-process under preemption and chunked prefill,
at TP=2 over gloo, and through `serve` over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch

from conftest import ServeProcess
from container.engine.model_config import ModelConfig, NotNativeArchitecture
from container.engine.model_runner import StepPlan
from container.engine.scheduler import ScheduledSeq
from container.engine.sequence import Sequence
from container.workers.protocol import SamplingParams
from test_engine import make_engine, random_prompts, run_staggered
from tiny_models import build_model, reference_greedy

HERE = Path(__file__).resolve().parent

NATIVE = {   # family -> build_model arguments
    "qwen3": ("qwen3", {}),
    "llama3.2-tied": ("llama", {"tie_word_embeddings": True}),
    "qwen2.5": ("qwen2", {"tie_word_embeddings": True}),
    "mistral-sliding-window": ("mistral-sliding", {}),
    "qwen3-moe": ("qwen3-moe", {}),
    "mixtral": ("mixtral", {}),
    "qwen2-moe-shared-expert": ("qwen2-moe", {}),
    "gemma2": ("gemma2", {}),
    "gemma3": ("gemma3", {}),
    "phi3-longrope": ("phi3", {}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    cache = {}

    def get(name, architecture=None, **overrides):
        if name not in cache:
            architecture, overrides = NATIVE.get(name, (architecture or name, overrides))
            cache[name] = build_model(root / name, architecture, **overrides)
        return cache[name]
    return get


def assert_matches_transformers(engine, model_dir, vocab):
    prompts = random_prompts(vocab)
    outputs = run_staggered(engine, prompts, 12)
    assert engine.scheduler.total_preemptions > 0          # the KV budget forced preemption
    assert engine.counters["chunked_prefill_steps"] > 0    # and long prompts were chunked
    assert engine.counters["mixed_steps"] > 0   # decodes ran as one batch beside prompt chunks
    assert outputs == reference_greedy(model_dir, prompts, 12)


def prompt_logits(runner, prompt) -> torch.Tensor:
    """Our logits for the prompt's last position, one prefill step."""
    seq = Sequence("p", list(prompt), SamplingParams(max_new_tokens=1))
    seq.block_ids = list(range(-(-len(prompt) // runner.block_size)))
    return runner.execute(StepPlan.build([ScheduledSeq(seq, len(prompt))], runner.block_size))[0]


@pytest.mark.parametrize("family", list(NATIVE))
def test_native_family_matches_transformers(models, family):
    from transformers import AutoModelForCausalLM

    model_dir = models(family)
    config = ModelConfig.from_dir(model_dir)
    assert config.module != "transformers"
    engine = make_engine(model_dir, num_blocks=40, budget=24)
    prompt = random_prompts(config.vocab_size, count=1, low=30, high=30, seed=5)[0]
    ours = prompt_logits(engine.runner, prompt)
    engine.runner.allocate_kv_cache(40)                    # a clean cache for the run
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
    assert_matches_transformers(engine, model_dir, config.vocab_size)


def test_windows_and_rotary_bases_are_read(models):
    config = ModelConfig.from_dir(models("mistral-sliding-window"))
    assert config.attention_kinds == ["sliding(8)", "sliding(8)"]   # prompts run to 60 tokens
    gemma3 = ModelConfig.from_dir(models("gemma3"))
    assert gemma3.attention_kinds == ["sliding(8)", "sliding(8)", "full"]
    assert (gemma3.rope_theta, gemma3.local_rope_theta) == (1000000.0, 10.0)
    gemma2 = ModelConfig.from_dir(models("gemma2"))
    assert (gemma2.attention_softcap, gemma2.final_softcap) == (5.0, 3.0)


def test_layer_windows_follow_layer_types():
    raw = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
           "intermediate_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2,
           "sliding_window": 16, "use_sliding_window": True,
           "layer_types": ["full_attention", "sliding_attention", "full_attention"]}
    assert ModelConfig.from_dict(raw).attention_kinds == ["full", "sliding(16)", "full"]
    raw["use_sliding_window"] = False
    assert ModelConfig.from_dict(raw).attention_kinds == ["full"] * 3


@pytest.mark.parametrize("family", ["falcon", "gpt2"])
def test_other_architectures_run_through_transformers(models, family):
    from container.engine.block_manager import BlockManager
    from container.engine.llm_engine import LLMEngine
    from container.engine.model_runner import ModelRunner
    from container.engine.models.transformers_fallback import load_transformers_model
    from container.engine.parallel import TensorParallel
    from container.engine.scheduler import Scheduler

    model_dir = models(family)
    with pytest.raises(NotNativeArchitecture):
        ModelConfig.from_dir(model_dir)
    model, config = load_transformers_model(model_dir, torch.float32, torch.device("cpu"), False)
    runner = ModelRunner(config, str(model_dir), 512, torch.float32, torch.device("cpu"),
                         TensorParallel(), 4, model=model)
    runner.allocate_kv_cache(40)
    engine = LLMEngine(runner, Scheduler(BlockManager(40, 4), 8, 24), config.eos_token_ids, 512)
    assert_matches_transformers(engine, model_dir, config.vocab_size)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "qwen3-moe", "qwen2-moe-shared-expert",
                                    "phi3-longrope"])
def test_tp2_matches_transformers(models, family, tmp_path):
    model_dir = models(family)
    out = tmp_path / "tp2.json"
    done = subprocess.run([sys.executable, str(HERE / "tp_family_ranks.py"), str(model_dir),
                           str(out), _free_port()], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preemptions"] > 0
    assert result["tokens"] == reference_greedy(model_dir, result["prompts"], 12)
    whole = sum(p.numel() for p in torch.nn.Module.parameters(
        _model_for(model_dir)))
    assert result["params"] < 0.75 * whole                  # rank 0 holds only its shard


def _model_for(model_dir):
    from container.engine.models import model_class

    config = ModelConfig.from_dir(model_dir)
    return model_class(config)(config, 64)


@pytest.fixture(scope="module")
def falcon_server(models):
    model_dir = models("falcon")
    (model_dir / "serving.properties").write_text(
        "option.num_kv_blocks=14\noption.kv_block_size=8\n"
        "option.max_rolling_batch_prefill_tokens=32\noption.max_rolling_batch_size=8\n")
    server = ServeProcess(model_dir).start(timeout=180)
    yield server
    server.stop()


def test_falcon_through_serve_names_its_path(falcon_server, models):
    import concurrent.futures as futures
    import random
    import time

    from transformers import AutoTokenizer

    model_dir = models("falcon")
    name = falcon_server.model_name()
    described = requests.get(falcon_server.url(f"/models/{name}"), timeout=10).json()[0]
    assert described["architecture"] == "FalconForCausalLM"
    assert described["modelPath"] == "transformers"
    assert described["attention"] == ["full", "full"]
    assert "FalconForCausalLM" in falcon_server.log and "transformers path" in falcon_server.log
    rng = random.Random(3)
    words = "the model serves tokens quickly while requests join and leave".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 30))) for _ in range(16)]
    results = {}

    def send(index):
        time.sleep(index * 0.02)
        response = requests.post(falcon_server.url("/invocations"), json={
            "inputs": prompts[index], "parameters": {"max_new_tokens": 10, "details": True,
                                                     "ignore_eos": True}}, timeout=120)
        assert response.status_code == 200, response.text
        results[index] = [t["id"] for t in response.json()["details"]["tokens"]]

    with futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(16)))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = reference_greedy(model_dir, [tokenizer(p)["input_ids"] for p in prompts], 10)
    assert [results[i] for i in range(16)] == expected


ROPE_CASES = {
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32,
             "beta_slow": 1},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "longrope": {"original_max_position_embeddings": 128,
                 "short_factor": [1.0 + 0.05 * i for i in range(16)],
                 "long_factor": [1.5 + 0.25 * i for i in range(16)]},
}


@pytest.mark.parametrize("kind", list(ROPE_CASES))
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_scaling_matches_transformers_init(kind, partial):
    """Our inverse frequencies and cos/sin factor against transformers' own rope init."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from container.engine.layers.rotary import inverse_frequencies

    parameters = dict(ROPE_CASES[kind], rope_type=kind, rope_theta=10000.0,
                      partial_rotary_factor=partial)
    if kind == "longrope" and partial != 1.0:
        parameters["short_factor"] = parameters["short_factor"][:8]
        parameters["long_factor"] = parameters["long_factor"][:8]
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32,
                                      max_position_embeddings=512, rope_parameters=parameters)
    ours_scaling = {k: v for k, v in parameters.items() if k != "rope_theta"}
    lengths = {"dynamic": [None, 2048], "longrope": [None, 600]}.get(kind, [None])
    for seq_len in lengths:
        theirs, their_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)
        ours, our_factor = inverse_frequencies(32, 10000.0, ours_scaling, 512,
                                               long=bool(seq_len), served=seq_len or 0)
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)
        assert our_factor == pytest.approx(their_factor or 1.0)


def test_longrope_table_switches_to_long_factors_past_the_original_context():
    from container.engine.layers.rotary import RotaryEmbedding, inverse_frequencies

    scaling = dict(ROPE_CASES["longrope"], rope_type="longrope")
    scaling["short_factor"], scaling["long_factor"] = (scaling["short_factor"][:8],
                                                       scaling["long_factor"][:8])
    table = RotaryEmbedding(16, 256, 10000.0, scaling, model_max_positions=512)
    short, factor = inverse_frequencies(16, 10000.0, scaling, 512)
    long, _ = inverse_frequencies(16, 10000.0, scaling, 512, long=True)
    torch.testing.assert_close(table.cos[100], (100 * short).cos() * factor)
    torch.testing.assert_close(table.cos[200], (200 * long).cos() * factor)


def test_gemma3_through_serve_names_native_path_and_layers(models, tmp_path):
    from transformers import AutoTokenizer

    model_dir = models("gemma3")
    (model_dir / "serving.properties").write_text(
        "option.num_kv_blocks=24\noption.kv_block_size=8\n"
        "option.max_rolling_batch_prefill_tokens=32\n")
    server = ServeProcess(model_dir).start(timeout=180)
    try:
        described = requests.get(server.url(f"/models/{server.model_name()}"),
                                 timeout=10).json()[0]
        assert described["architecture"] == "Gemma3ForCausalLM"
        assert described["modelPath"] == "native"
        assert described["attention"] == ["sliding(8)", "sliding(8)", "full"]
        prompts = ["the model serves tokens quickly while requests join and leave " * 3,
                   "café 你好", "a"]
        got = []
        for prompt in prompts:
            response = requests.post(server.url("/invocations"), json={
                "inputs": prompt, "parameters": {"max_new_tokens": 10, "details": True,
                                                 "ignore_eos": True}}, timeout=120)
            assert response.status_code == 200, response.text
            got.append([t["id"] for t in response.json()["details"]["tokens"]])
    finally:
        server.stop()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert got == reference_greedy(model_dir, [tokenizer(p)["input_ids"] for p in prompts], 10)


def _remote_code_checkpoint(source: Path, target: Path) -> Path:
    """GPT-2 weights behind a config whose classes ship with the checkpoint (auto_map)."""
    import shutil

    shutil.copytree(source, target)
    (target / "configuration_tinycustom.py").write_text(
        "from transformers import GPT2Config\n\n"
        "class TinyCustomConfig(GPT2Config):\n    model_type = 'tinycustom'\n")
    (target / "modeling_tinycustom.py").write_text(
        "from transformers import GPT2LMHeadModel\n"
        "from .configuration_tinycustom import TinyCustomConfig\n\n"
        "class TinyCustomForCausalLM(GPT2LMHeadModel):\n    config_class = TinyCustomConfig\n")
    config = json.loads((target / "config.json").read_text())
    config.update(model_type="tinycustom", architectures=["TinyCustomForCausalLM"], auto_map={
        "AutoConfig": "configuration_tinycustom.TinyCustomConfig",
        "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM"})
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_trust_remote_code_is_off_unless_asked(models, tmp_path):
    from container.engine.models.transformers_fallback import load_transformers_model
    from container.errors import StartupError

    model_dir = _remote_code_checkpoint(models("gpt2"), tmp_path / "custom")
    with pytest.raises(StartupError, match="option.trust_remote_code=true"):
        load_transformers_model(model_dir, torch.float32, torch.device("cpu"), False)
    model, config = load_transformers_model(model_dir, torch.float32, torch.device("cpu"), True)
    assert config.architecture == "TinyCustomForCausalLM" and config.num_layers == 2
