"""GPU run for the model families (one lent H100/H200): correctness, then Qwen3-8B at batch 1.

    python3 bench/device/families_gpu.py [phases...]   phases: env tests qwen3 peer llama

env     device copy bandwidth (the batch-1 roofline's denominator)
tests   tests/test_gpu.py and tests/test_gpu_families.py (every family's fast path against
        transformers and against its own reference path)
qwen3   a random bf16 checkpoint in Qwen3-8B's shape, `serve` + the load generator: W1
        (batch 1, 128 in / 256 out), against the weight-bandwidth roofline
peer    transformers `generate` at batch 1 (128/256) on the same checkpoint and GPU
llama   W1 on the Llama-3.1-8B shape (DESIGN.md §6) through serve: nothing regressed

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
    finally:
        finish()
