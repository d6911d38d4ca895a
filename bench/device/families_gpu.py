"""GPU run for the model families (one lent H100/H200): correctness, then Qwen3-8B at batch 1.

    python3 bench/device/families_gpu.py [phases...]
        phases: env tests moetests qwen3 peer llama moe

env     device copy bandwidth (the batch-1 roofline's denominator)
tests   tests/test_gpu.py and tests/test_gpu_families.py (every family's fast path against
        transformers and against its own reference path)
qwen3   a random bf16 checkpoint in Qwen3-8B's shape, `serve` + the load generator: W1
        (batch 1, 128 in / 256 out), against the weight-bandwidth roofline
peer    transformers `generate` at batch 1 (128/256) on the same checkpoint and GPU
llama   W1 on the Llama-3.1-8B shape (DESIGN.md §6) through serve: nothing regressed
moetests  only the mixture-of-experts checks of tests/test_gpu_families.py
moekernel one Qwen3-30B-A3B MoE block's experts at 1-64 tokens: the few-token pair path
        against the sorted grouped path, microseconds per call
moe     W1 on a Qwen3-30B-A3B-shaped MoE (its layer shape, 128 experts, top 8) with
        MOE_LAYERS of its 48 layers (24 by default: the full 61 GB do not fit the lent
        machine's disk beside everything else), against the roofline of the bytes a batch-1
        decode step reads (attention, router, the 8 active experts, lm_head)

Results: JSON under $OUT (or bench/results), a summary table printed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (CKPT, OUT, REPO, copy_bandwidth_tbps, first_level, load_generator, log,
                    start_serve, word_tokenizer, write_llama8b)

QWEN3 = Path(os.environ.get("QWEN3_DIR", "/tmp/qwen3_8b"))
MOE = Path(os.environ.get("MOE_DIR", "/tmp/qwen3_30b_a3b"))
SUMMARY: dict = {}
SERVE_ENV = dict(OPTION_MAX_ROLLING_BATCH_SIZE="64", OPTION_MAX_MODEL_LEN="2048",
                 SERVING_FRONTEND_WORKERS="2")
W1 = ["--concurrency", "1", "--num-prompts", "4", "--input-len", "128", "--output-len", "256"]


def phase_env() -> None:
    import torch

    SUMMARY["env"] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "copy_TBps": copy_bandwidth_tbps()}
    log(f"env: {SUMMARY['env']}")


def phase_tests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py",
                            "tests/test_gpu_families.py", "-p", "no:cacheprovider"], cwd=REPO)
    SUMMARY["gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    log(f"gpu tests: {SUMMARY['gpu_tests']}")


def phase_moetests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_gpu_families.py",
                            "-k", "mixtral or qwen3_moe or grouped", "-p", "no:cacheprovider"],
                           cwd=REPO)
    SUMMARY["moe_gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    log(f"moe gpu tests: {SUMMARY['moe_gpu_tests']}")


def phase_moekernel() -> None:
    import torch

    from container.engine.kernels import moe
    from container.engine.layers.moe import route

    torch.manual_seed(0)
    experts_count, hidden, inter, top_k = 128, 2048, 768, 8
    w13 = torch.randn(experts_count, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16)
    w2 = torch.randn(experts_count, hidden, inter, device="cuda", dtype=torch.bfloat16)
    rows = []
    for tokens in (1, 2, 4, 8, 16, 64):
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        weights, experts = route(torch.randn(tokens, experts_count, device="cuda"), top_k, True)
        row = {"tokens": tokens}
        for name, limit in (("pair_us", 1 << 30), ("sorted_us", 0)):
            moe.PAIR_PATH_MAX_PAIRS = limit
            for _ in range(3):
                moe.grouped_experts(x, w13, w2, weights, experts)
            graph = torch.cuda.CUDAGraph()       # as the decode step runs: inside a graph
            with torch.cuda.graph(graph):
                moe.grouped_experts(x, w13, w2, weights, experts)
            start, end = torch.cuda.Event(True), torch.cuda.Event(True)
            start.record()
            for _ in range(50):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            row[name] = start.elapsed_time(end) * 1000 / 50
        active = len(torch.unique(experts))
        row["read_us_at_copy_bw"] = (active * 3 * hidden * inter * 2 /
                                     (SUMMARY.get("env", {}).get("copy_TBps", 3.0) * 1e12) * 1e6)
        rows.append(row)
        log(f"moe kernel: {row}")
    moe.PAIR_PATH_MAX_PAIRS = 32
    SUMMARY["moe_kernel"] = rows


def write_qwen3_8b(directory: Path) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (directory / "model.safetensors.index.json").exists():
        return {}
    config = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                         num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                         tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="4GB")
    word_tokenizer(directory, config.vocab_size)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.model.embed_tokens.weight
    read = weights - embedding.numel() * embedding.element_size()   # one row of it per step
    del model, embedding
    torch.cuda.empty_cache()
    built = {"weights_GB": weights / 1e9, "decode_read_GB": read / 1e9,
             "build_s": time.perf_counter() - started}
    (directory / "bench_sizes.json").write_text(json.dumps(built))
    log(f"qwen3 checkpoint: {built}")
    return built


def _w1(label: str, directory: Path, sizes: dict, key: str) -> None:
    server = start_serve(directory, SERVE_ENV)
    try:
        level = first_level(load_generator(label, "native", directory, W1))
    finally:
        server.stop()
    copy = SUMMARY.get("env", {}).get("copy_TBps")
    result = {"start_to_first_token_s": server.first_token_s, "failed": level.get("failed"),
              "output_tok_s": level.get("output_tokens_per_s"),
              "per_user_tok_s_mean": (level.get("per_user_tokens_per_s") or {}).get("mean"),
              "itl_ms": level.get("itl_ms"), "tpot_ms": level.get("tpot_ms")}
    if copy and sizes:
        roofline = copy * 1e12 / (sizes["decode_read_GB"] * 1e9)
        result["roofline_tok_s"] = roofline
        per_user = result["per_user_tok_s_mean"] or result["output_tok_s"]
        result["per_user_of_roofline"] = per_user / roofline if per_user else None
    SUMMARY[key] = result
    log(f"{key}: {result}")


def phase_qwen3() -> None:
    write_qwen3_8b(QWEN3)
    sizes = json.loads((QWEN3 / "bench_sizes.json").read_text())
    SUMMARY["qwen3_checkpoint"] = sizes
    _w1("W1_qwen3_8b_batch1_128in_256out", QWEN3, sizes, "qwen3_W1")


def phase_peer() -> None:
    label = "peer_generate_bs1_qwen3_8b_128_256"
    command = [sys.executable, "-m", "container.bench.offline", "--model-dir", str(QWEN3),
               "--num-prompts", "1", "--input-len", "128", "--output-len", "256",
               "--option", "max_model_len=2048", "--peers", "generate", "--peer-batch", "1",
               "--label", label, "--results-dir", str(OUT)]
    subprocess.call(command, cwd=REPO)
    path = OUT / f"{label}.json"
    if path.exists():
        SUMMARY["qwen3_offline_vs_generate_bs1"] = json.loads(path.read_text())["results"]


def phase_llama() -> None:
    built = write_llama8b(CKPT) or {}
    weights = built.get("weights_GB") or 16.06
    sizes = {"weights_GB": weights, "decode_read_GB": weights - 128256 * 4096 * 2 / 1e9}
    _w1("W1_llama8b_batch1_128in_256out", CKPT, sizes, "llama_W1")


def moe_decode_bytes(c) -> int:
    """Bytes one batch-1 decode step must read: per layer the attention projections, the
    router and top_k experts' three matrices; then lm_head (and one embedding row)."""
    h, d = c.hidden_size, c.head_dim
    attention = h * d * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    experts = c.num_experts_per_tok * 3 * h * c.moe_intermediate_size
    per_layer = attention + c.num_experts * h + experts
    return 2 * (c.num_hidden_layers * per_layer + c.vocab_size * h + h)


def write_qwen3_moe(directory: Path) -> dict:
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    if (directory / "bench_sizes.json").exists():
        return json.loads((directory / "bench_sizes.json").read_text())
    config = Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=int(os.environ.get("MOE_LAYERS", "24")), num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=False,
        eos_token_id=None, bos_token_id=None)
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)       # built in bf16: float32 would not fit
    try:
        with torch.device("cuda"):
            model = Qwen3MoeForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="4GB")
    word_tokenizer(directory, config.vocab_size)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    built = {"layers": config.num_hidden_layers, "weights_GB": weights / 1e9,
             "decode_read_GB": moe_decode_bytes(config) / 1e9,
             "build_s": time.perf_counter() - started}
    (directory / "bench_sizes.json").write_text(json.dumps(built))
    log(f"moe checkpoint: {built}")
    return built


def phase_moe() -> None:
    sizes = write_qwen3_moe(MOE)
    SUMMARY["moe_checkpoint"] = sizes
    _w1("W1_qwen3_30b_a3b_shape_batch1_128in_256out", MOE, sizes, "moe_W1")


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "families_gpu_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(json.dumps(SUMMARY, indent=1, default=str)[-5000:])


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "tests", "qwen3", "peer", "llama"]
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for phase in phases:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
            finish()                  # after every phase: a timed-out run keeps what it has
    finally:
        finish()
