"""FP8 in the native engine: option.quantize=fp8 (per-channel weights quantized at load),
FP8 checkpoints in the compressed-tensors and ModelOpt layouts, option.kv_cache_dtype=fp8,
tensor parallelism, and the start-up refusals.

The oracle is an independent simulation: the test quantizes the same weights itself with
torch's float8_e4m3fn (or rounds K and V to it inside transformers' attention) and runs
transformers on the result. Ours must match it to float32 rounding, while the unquantized
model differs from both by far more, so a path that skipped quantization would fail too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from conftest import ServeProcess, error_line, free_port, run_serve_to_exit
from container.engine.model_config import ModelConfig
from container.engine.model_runner import ModelRunner, StepPlan
from container.engine.parallel import TensorParallel
from container.engine.quant.plan import QuantPlan, plan_quantization
from container.engine.scheduler import ScheduledSeq
from container.engine.sequence import Sequence
from container.errors import StartupError
from container.workers.protocol import SamplingParams
from test_engine import make_engine, random_prompts, run_staggered
from tiny_models import build_model

HERE = Path(__file__).resolve().parent
F8 = torch.float8_e4m3fn
TARGET = re.compile(r"layers\.\d+\.(self_attn\.([qkvo]|qkv)_proj|mlp\.(gate|up|down|gate_up)_proj)"
                    r"\.weight$")
PROMPT_COUNT = 4


# -- the simulation (written here, independently of container/engine/quant) -----------------

def fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1, keepdim=True) / 448.0
    return (w / scale).to(F8), scale


def fp8_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().max() / 448.0
    return (w / scale).to(F8), scale


def dequantized_state(model_dir: Path, quantize) -> dict[str, torch.Tensor]:
    state = load_file(str(model_dir / "model.safetensors"))
    out = {}
    for name, w in state.items():
        if TARGET.search(name):
            q, scale = quantize(w.float())
            w = q.float() * scale
        out[name] = w
    return out


def transformers_logits(model_dir: Path, prompts, state=None, attention=None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attention} if attention else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    with torch.no_grad():
        return torch.stack([model(torch.tensor([p])).logits[0, -1] for p in prompts])


def register_fp8_kv_attention() -> str:
    """transformers' SDPA attention with K and V rounded to e4m3 first, as an FP8 cache with
    scale 1.0 stores them."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fp8_kv(module, query, key, value, *args, **kwargs):
        key = key.clamp(-448, 448).to(F8).to(key.dtype)
        value = value.clamp(-448, 448).to(F8).to(value.dtype)
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("fp8_kv_test", fp8_kv)
    return "fp8_kv_test"


# -- ours ------------------------------------------------------------------------------------

def runner_for(model_dir, plan: QuantPlan | None, dtype=torch.float32, blocks=64,
               block_size=4):
    config = ModelConfig.from_dir(model_dir)
    runner = ModelRunner(config, str(model_dir), 512, dtype, torch.device("cpu"),
                         TensorParallel(), block_size, quant=plan)
    runner.allocate_kv_cache(blocks)
    return runner


def our_logits(runner, prompts) -> torch.Tensor:
    rows = []
    for prompt in prompts:
        seq = Sequence("p", list(prompt), SamplingParams(max_new_tokens=1))
        seq.block_ids = list(range(-(-len(prompt) // runner.block_size)))
        plan = StepPlan.build([ScheduledSeq(seq, len(prompt))], runner.block_size)
        rows.append(runner.execute(plan)[0].float())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # 6 query heads over 3 KV heads: uneven splits at TP=2
    return build_model(tmp_path_factory.mktemp("fp8") / "llama", "llama", num_attention_heads=6,
                       num_key_value_heads=3, hidden_size=96, intermediate_size=160)


@pytest.fixture(scope="module")
def prompts(tiny):
    return random_prompts(ModelConfig.from_dir(tiny).vocab_size, count=PROMPT_COUNT, low=20,
                          high=40, seed=3)


@pytest.fixture(scope="module")
def plain_logits(tiny, prompts):
    return transformers_logits(tiny, prompts)


def assert_near_simulation(ours, simulated, plain):
    """Ours equals the simulation to float32 rounding; quantization itself moved the logits
    measurably (so the comparison can tell quantized from not)."""
    to_simulation = (ours - simulated).abs().max().item()
    from_plain = (simulated - plain).abs().max().item()
    assert from_plain > 1e-2, from_plain
    assert to_simulation < 2e-4 and to_simulation < from_plain / 100, (to_simulation, from_plain)


# -- (1) quantized at load -------------------------------------------------------------------

def test_quantize_fp8_matches_per_channel_simulation(tiny, prompts, plain_logits):
    runner = runner_for(tiny, QuantPlan(quantize_at_load=True))
    ours = our_logits(runner, prompts)
    simulated = transformers_logits(tiny, prompts, dequantized_state(tiny, fp8_per_channel))
    assert_near_simulation(ours, simulated, plain_logits)


@pytest.mark.parametrize("family, overrides", [
    ("qwen3", {}), ("gemma2", {}), ("phi3", {})], ids=["qwen3", "gemma2", "phi3-fused"])
def test_quantize_fp8_across_families(tmp_path, family, overrides):
    """q/k norms (Qwen3), GeGLU and soft-caps (Gemma 2), qkv and gate/up fused in the
    checkpoint (Phi-3, read piece by piece; its per-tensor FP8 checkpoint too)."""
    model_dir = build_model(tmp_path / family, family, **overrides)
    prompts = random_prompts(ModelConfig.from_dir(model_dir).vocab_size, count=2, low=20,
                             high=30, seed=4)
    plain = transformers_logits(model_dir, prompts)
    ours = our_logits(runner_for(model_dir, QuantPlan(quantize_at_load=True)), prompts)
    simulated = transformers_logits(model_dir, prompts,
                                    dequantized_state(model_dir, fp8_per_channel))
    assert_near_simulation(ours, simulated, plain)
    if family == "phi3":
        checkpoint = write_fp8_checkpoint(model_dir, tmp_path / "modelopt", "modelopt")
        plan = plan_quantization(None, None, checkpoint, "phi3", "Phi3ForCausalLM")
        simulated = transformers_logits(model_dir, prompts,
                                        dequantized_state(model_dir, fp8_per_tensor))
        assert_near_simulation(our_logits(runner_for(checkpoint, plan), prompts), simulated,
                               plain)


def test_quantized_layers_are_fp8_within_e4m3_error_and_the_rest_stays(tiny):
    runner = runner_for(tiny, QuantPlan(quantize_at_load=True))
    original = load_file(str(tiny / "model.safetensors"))
    attention = runner.model.model.layers[0].self_attn
    layer = runner.model.model.layers[0]
    fp8 = {"qkv": attention.qkv_proj, "o": attention.o_proj, "gate_up": layer.mlp.gate_up_proj,
           "down": layer.mlp.down_proj}
    for module in fp8.values():
        assert module.weight.dtype == F8 and module.weight_scale.dtype == torch.float32
        assert module.weight_scale.shape == (module.weight.shape[0],)
    assert runner.model.lm_head.weight.dtype == torch.float32
    assert runner.model.model.embed_tokens.weight.dtype == torch.float32
    # e4m3: within 2^-4 of each value (3 mantissa bits) above 2^-6, steps of 2^-9 below
    w = original["model.layers.0.mlp.down_proj.weight"].float()
    down = fp8["down"]
    scale = down.weight_scale[:, None]
    error = (down.weight.float() * scale - w).abs()
    assert bool((error <= 2 ** -4 * w.abs() + 2 ** -10 * scale + 1e-7).all())
    assert error.max() > 0


# -- (2) FP8 checkpoints ---------------------------------------------------------------------

def write_fp8_checkpoint(source: Path, target: Path, layout: str) -> Path:
    """compressed-tensors: per-channel scales [N, 1], dynamic per-token activations, lm_head
    ignored. ModelOpt: per-tensor scales, static input scales and KV scales, described only
    by hf_quant_config.json."""
    shutil.copytree(source, target)
    state = load_file(str(source / "model.safetensors"))
    out = {}
    for name, w in state.items():
        if not TARGET.search(name):
            out[name] = w
            continue
        module = name[:-len(".weight")]
        if layout == "compressed-tensors":
            q, scale = fp8_per_channel(w.float())
            out[name], out[f"{module}.weight_scale"] = q, scale.reshape(-1, 1)
        else:
            q, scale = fp8_per_tensor(w.float())
            out[name], out[f"{module}.weight_scale"] = q, scale.reshape(())
            out[f"{module}.input_scale"] = torch.tensor(0.02)
            if module.endswith("k_proj"):
                out[f"{module}.k_scale"] = torch.tensor(1.0)
            if module.endswith("v_proj"):
                out[f"{module}.v_scale"] = torch.tensor(1.0)
    save_file(out, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    if layout == "compressed-tensors":
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                            "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                      "symmetric": True, "dynamic": True}}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}
    else:
        (target / "hf_quant_config.json").write_text(json.dumps({
            "producer": {"name": "modelopt", "version": "0.19.0"},
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                             "exclude_modules": ["lm_head"]}}))
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("layout", ["compressed-tensors", "modelopt"])
def test_fp8_checkpoint_loads_as_stored(tiny, prompts, plain_logits, tmp_path, layout):
    checkpoint = write_fp8_checkpoint(tiny, tmp_path / layout, layout)
    plan = plan_quantization(None, None, checkpoint, "llama", "LlamaForCausalLM")
    assert plan.checkpoint is not None and plan.checkpoint.method == layout
    runner = runner_for(checkpoint, plan)
    stored = load_file(str(checkpoint / "model.safetensors"))
    qkv = runner.model.model.layers[1].self_attn.qkv_proj
    q_rows = qkv.q_rows[1]
    assert torch.equal(qkv.weight[:q_rows].view(torch.uint8),
                       stored["model.layers.1.self_attn.q_proj.weight"].view(torch.uint8))
    quantize = fp8_per_channel if layout == "compressed-tensors" else fp8_per_tensor
    simulated = transformers_logits(tiny, prompts, dequantized_state(tiny, quantize))
    assert_near_simulation(our_logits(runner, prompts), simulated, plain_logits)


# -- (3) the FP8 KV cache --------------------------------------------------------------------

def test_fp8_kv_cache_matches_transformers_with_fp8_keys_and_values(tiny, prompts, plain_logits):
    runner = runner_for(tiny, QuantPlan(kv_cache_option="fp8"))
    assert runner.kv_caches[0].dtype == F8
    simulated = transformers_logits(tiny, prompts, attention=register_fp8_kv_attention())
    assert_near_simulation(our_logits(runner, prompts), simulated, plain_logits)


def test_fp8_kv_cache_under_preemption_chunking_and_prefix_cache(tiny):
    """Blocks read back after preemption, from the prefix cache and by later chunks give the
    same greedy tokens as an engine with room to spare (both FP8)."""
    vocab = ModelConfig.from_dir(tiny).vocab_size
    prompts = random_prompts(vocab, count=12)

    def engine(blocks, budget):
        built = make_engine(tiny, num_blocks=blocks, budget=budget)
        built.runner.kv_dtype = F8
        built.runner.allocate_kv_cache(blocks)
        return built

    tight = engine(40, 24)
    roomy = engine(400, 512)
    tight_tokens = run_staggered(tight, prompts, 10)
    assert tight.scheduler.total_preemptions > 0
    assert tight.counters["chunked_prefill_steps"] > 0
    assert tight.counters["cached_prompt_tokens"] > 0
    assert tight_tokens == run_staggered(roomy, prompts, 10)


def test_fp8_kv_cache_counts_one_byte_per_value(tiny):
    auto = runner_for(tiny, QuantPlan(), dtype=torch.bfloat16, blocks=2)
    fp8 = runner_for(tiny, QuantPlan(kv_cache_option="fp8"), dtype=torch.bfloat16, blocks=2)
    assert auto.kv_bytes_per_block() == 2 * fp8.kv_bytes_per_block()
    assert fp8.kv_bytes_per_block() == fp8.kv_caches[0][:, 0].numel() * len(fp8.kv_caches)


# -- (4) tensor parallelism ------------------------------------------------------------------

def test_tp2_fp8_equals_tp1_fp8(tiny, prompts, tmp_path):
    """Each rank's FP8 weights and scales are exactly TP=1's rows (row-parallel layers: the
    whole rows' scales), for both ways in, and the logits agree."""
    checkpoint = write_fp8_checkpoint(tiny, tmp_path / "modelopt", "modelopt")
    out = tmp_path / "ranks.pt"
    done = subprocess.run([sys.executable, str(HERE / "fp8_tp_ranks.py"), str(tiny),
                           str(checkpoint), json.dumps(prompts), str(out), str(free_port())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    for name, model_dir, plan in (("quantize", tiny, QuantPlan(quantize_at_load=True)),
                                  ("checkpoint", checkpoint, plan_quantization(
                                      None, None, checkpoint, "llama", "LlamaForCausalLM"))):
        single = runner_for(model_dir, plan)
        whole = single.model.state_dict()
        assert len(ranks[0][name]["shards"]) == 2 * 4 * 2      # 2 layers, 4 layers each
        for rank in (0, 1):
            for key, piece in ranks[rank][name]["shards"].items():
                full = whole[key]
                assert piece.dtype == full.dtype, key
                rows = ranks[rank][name]["rows"][key]
                expected = _rank_slice(full, rows, key)
                assert torch.equal(piece.view(torch.uint8) if piece.dtype == F8 else piece,
                                   expected.view(torch.uint8) if full.dtype == F8 else expected), key
        torch.testing.assert_close(ranks[0][name]["logits"], our_logits(single, prompts),
                                   atol=1e-4, rtol=1e-4)


def _rank_slice(full: torch.Tensor, rows: list, key: str) -> torch.Tensor:
    """rows: [(start, count), ...] of the full tensor's rows this rank holds, or ("cols",
    start, count) for a row-parallel weight's input slice."""
    if rows and rows[0] == "cols":
        return full[:, rows[1]:rows[1] + rows[2]]
    return torch.cat([full[s:s + c] for s, c in rows])


# -- (5) refusals ----------------------------------------------------------------------------

def _load_config(tmp_path, properties: str):
    from container.config.loader import load_config

    (tmp_path / "serving.properties").write_text("option.model_id=/m\n" + properties)
    return load_config(tmp_path, {})


@pytest.mark.parametrize("properties, words", [
    ("option.quantize=int4\n", ["option.quantize", "'int4'", "fp8"]),
    ("option.kv_cache_dtype=fp16x\n", ["option.kv_cache_dtype", "'fp16x'", "auto, fp8"]),
])
def test_bad_values_are_one_line(tmp_path, properties, words):
    with pytest.raises(StartupError) as caught:
        _load_config(tmp_path, properties)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_accepted_spellings(tmp_path):
    from container.config.options_native import NativeOptions

    config = _load_config(tmp_path, "option.quantize=FP8\noption.kv_cache_dtype=fp8_e4m3\n")
    options = NativeOptions.from_options(config.options)
    assert (options.quantize, options.kv_cache_dtype) == ("fp8", "fp8")


def test_fp8_weights_refused_for_experts_and_the_transformers_path(tiny):
    with pytest.raises(StartupError, match="mixture-of-experts.*MixtralForCausalLM"):
        plan_quantization("fp8", None, tiny, "moe", "MixtralForCausalLM")
    with pytest.raises(StartupError, match="transformers"):
        plan_quantization("fp8", None, tiny, "transformers", "FalconForCausalLM")
    assert plan_quantization(None, "fp8", tiny, "moe", "MixtralForCausalLM").kv_cache_option \
        == "fp8"


def test_other_checkpoint_quantization_is_refused_at_start(tiny, tmp_path):
    target = tmp_path / "awq"
    shutil.copytree(tiny, target)
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (target / "config.json").write_text(json.dumps(config))
    code, _, err = run_serve_to_exit(target, timeout=120)
    line = error_line(err)
    assert code != 0
    assert "'awq'" in line and "compressed-tensors" in line and "modelopt" in line, line
    config["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {
        "g": {"weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(StartupError, match="compressed-tensors.*8 bits, type int"):
        plan_quantization(None, None, target, "llama", "LlamaForCausalLM")


# -- through serve ---------------------------------------------------------------------------

BUDGET_GB = 0.0005      # about 512 KiB: far fewer blocks than max_model_len would use


@pytest.fixture(scope="module")
def fp8_server(tiny, tmp_path_factory):
    target = tmp_path_factory.mktemp("served") / "m"
    shutil.copytree(tiny, target)
    (target / "serving.properties").write_text(
        "option.dtype=bf16\noption.quantize=fp8\noption.kv_cache_dtype=fp8\n"
        f"option.cpu_kv_cache_gb={BUDGET_GB}\noption.kv_block_size=16\n"
        "option.tensor_parallel_degree=1\n")
    server = ServeProcess(target).start()
    yield server
    server.stop()


def test_served_fp8_describes_itself_and_doubles_the_kv_blocks(fp8_server, tiny):
    described = requests.get(fp8_server.url(f"/models/{fp8_server.model_name()}"),
                             timeout=10).json()[0]
    quantization = described["quantization"]
    assert quantization["kv_cache_dtype"] == "fp8_e4m3"
    assert quantization["weights"].startswith("fp8 (quantized at load")
    config = ModelConfig.from_dir(tiny)
    values_per_block = 2 * config.num_layers * 16 * config.num_kv_heads * config.head_dim
    budget = int(BUDGET_GB * (1 << 30))
    blocks = described["engineStats"]["kv_blocks_total"]
    assert blocks == budget // values_per_block                   # one byte a value
    assert blocks >= 2 * (budget // (2 * values_per_block))       # bf16's count, doubled
    assert "FP8 weights: 8 linear layers (down_proj, gate_up_proj, o_proj, qkv_proj)" \
        in fp8_server.log
    assert "fp8_e4m3" in fp8_server.log


def test_served_fp8_generates_what_the_engine_does_in_process(fp8_server, tiny):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    texts = ["def resolve_model_dir(config):", "Grüße aus Köln! 🙂", "the KV cache"]
    # the server's KV block size (16): in bf16 the padded length of a decode's gathered keys
    # can move a near-tie of this tiny model's logits
    engine = make_engine(tiny, num_blocks=64, block_size=16, budget=512)
    engine.runner = runner_for(tiny, QuantPlan(quantize_at_load=True, kv_cache_option="fp8"),
                               dtype=torch.bfloat16, block_size=16)
    for text in texts:         # one at a time, as the server gets them
        expected = run_staggered(engine, [tokenizer.encode(text).ids], 8)[0]
        response = requests.post(fp8_server.url("/invocations"), json={
            "inputs": text, "parameters": {"max_new_tokens": 8, "details": True,
                                           "ignore_eos": True}}, timeout=60)
        assert response.status_code == 200, response.text
        assert [t["id"] for t in response.json()["details"]["tokens"]] == expected, text
