"""Tensor-parallel GPU benchmark of the native engine (for the lent multi-GPU machines).

    python3 bench/device/native_tp.py PHASE [PHASE ...]

allreduce     latency of one decode-sized all-reduce (NCCL) across the GPUs
check         TP=N against TP=1 on a mid-size random model: first-token log-probs agree
w1_8b         8B-shaped checkpoint, W1 (batch 1, 128 in / 256 out) at TP=1 and TP=N
w2_70b        70B-shaped checkpoint (DESIGN.md §6) at TP=N, W2 (500 requests, 467 / 256)

Checkpoints are random bf16 weights written shard by shard (the 70B one never exists whole in
any one GPU's memory). Results go to $OUT as JSON; a table is printed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (OUT, PORT, REPO, first_level, load_generator, log,  # noqa: E402
                    start_serve, word_tokenizer)

GPUS = int(os.environ.get("TP_GPUS", "0")) or None
SUMMARY: dict = {}

SHAPES = {
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8),
    "70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8),
    "mid": dict(hidden=2048, intermediate=5632, layers=8, heads=16, kv_heads=8),
}


def gpu_count() -> int:
    import torch

    return GPUS or torch.cuda.device_count()


def write_checkpoint(directory: Path, shape: dict, vocab: int = 128256,
                     layers_per_file: int = 4) -> float:
    """Random bf16 Llama weights in Hugging Face names, one safetensors file per few layers."""
    import torch
    from safetensors.torch import save_file

    if (directory / "model.safetensors.index.json").exists():
        return 0.0
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    h, i, n, kv = shape["hidden"], shape["intermediate"], shape["heads"], shape["kv_heads"]
    d = h // n
    generator = torch.Generator(device="cuda").manual_seed(0)

    def rand(*size, scale=0.02):
        return (torch.randn(*size, device="cuda", generator=generator) * scale).to(torch.bfloat16)

    weight_map, total = {}, 0

    def flush(tensors: dict, name: str):
        nonlocal total
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(directory / name))
        for key, value in tensors.items():
            weight_map[key] = name
            total += value.numel() * value.element_size()

    flush({"model.embed_tokens.weight": rand(vocab, h), "model.norm.weight": torch.ones(
        h, dtype=torch.bfloat16, device="cuda"), "lm_head.weight": rand(vocab, h)}, "edges.safetensors")
    for first in range(0, shape["layers"], layers_per_file):
        tensors = {}
        for layer in range(first, min(first + layers_per_file, shape["layers"])):
            p = f"model.layers.{layer}."
            tensors.update({
                p + "self_attn.q_proj.weight": rand(n * d, h),
                p + "self_attn.k_proj.weight": rand(kv * d, h),
                p + "self_attn.v_proj.weight": rand(kv * d, h),
                p + "self_attn.o_proj.weight": rand(h, n * d),
                p + "mlp.gate_proj.weight": rand(i, h),
                p + "mlp.up_proj.weight": rand(i, h),
                p + "mlp.down_proj.weight": rand(h, i),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16, device="cuda"),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16,
                                                                  device="cuda"),
            })
        flush(tensors, f"layers-{first:03d}.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": h, "intermediate_size": i, "num_hidden_layers": shape["layers"],
        "num_attention_heads": n, "num_key_value_heads": kv, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False, "hidden_act": "silu"}))
    word_tokenizer(directory, vocab)
    log(f"checkpoint {directory}: {total / 1e9:.1f} GB in {time.perf_counter() - started:.0f} s")
    return total / 1e9


def start(model_dir: Path, tp: int, **options):
    """serve at tensor_parallel_degree=tp, once it has answered (first_token_s)."""
    env = dict(OPTION_TENSOR_PARALLEL_DEGREE=str(tp), OPTION_MAX_MODEL_LEN="2048",
               SERVING_FRONTEND_WORKERS="8", SERVING_JOB_QUEUE_SIZE="4000",
               SERVING_COLLECTIVE_TIMEOUT="600")
    env.update({f"OPTION_{k.upper()}": str(v) for k, v in options.items()})
    return start_serve(model_dir, env)


def first_logprobs(prompts: list[str]) -> list[tuple[int, float]]:
    """The first generated token and its log-probability, per prompt."""
    import requests

    out = []
    for prompt in prompts:
        body = requests.post(f"http://127.0.0.1:{PORT}/invocations", json={
            "inputs": prompt, "parameters": {"max_new_tokens": 1, "details": True}},
            timeout=60).json()
        token = body["details"]["tokens"][0]
        out.append((token["id"], token["log_prob"]))
    return out


def bench(label: str, tokenizer: Path, args: list[str]) -> dict:
    return first_level(load_generator(label, "native", tokenizer, args))


def phase_allreduce() -> None:
    script = REPO / "bench" / "device" / "allreduce_latency.py"
    code = subprocess.call([sys.executable, "-m", "torch.distributed.run",
                            f"--nproc_per_node={gpu_count()}", str(script)], cwd=REPO)
    path = OUT / "allreduce_latency.json"
    SUMMARY["allreduce"] = json.loads(path.read_text()) if path.exists() else f"failed ({code})"


def phase_check() -> None:
    directory = Path("/tmp/llama-mid")
    write_checkpoint(directory, SHAPES["mid"])
    prompts = [" ".join(f"w{(i * 7919 + j * 104729) % 128000}" for j in range(40 + i * 30))
               for i in range(4)]
    results = {}
    for tp in (1, gpu_count()):
        server = start(directory, tp)
        try:
            results[tp] = first_logprobs(prompts)
        finally:
            server.stop()
    single, split = results[1], results[gpu_count()]
    worst = max(abs(a[1] - b[1]) for a, b in zip(single, split))
    same = sum(a[0] == b[0] for a, b in zip(single, split))
    SUMMARY["tp_check"] = {"tp": gpu_count(), "same_first_token": f"{same}/{len(prompts)}",
                           "max_logprob_diff": worst}
    log(f"TP check: {SUMMARY['tp_check']}")


def phase_w1_8b() -> None:
    directory = Path("/tmp/llama8b")
    write_checkpoint(directory, SHAPES["8b"])
    for tp in (1, gpu_count()):
        server = start(directory, tp)
        try:
            level = bench(f"W1_tp{tp}_8b", directory, ["--concurrency", "1", "--num-prompts", "4",
                                                       "--input-len", "128", "--output-len", "256"])
            SUMMARY[f"W1_8b_tp{tp}"] = {"output_tokens_per_s": level.get("output_tokens_per_s"),
                                       "per_user": level.get("per_user_tokens_per_s", {}).get("mean"),
                                       "start_to_first_token_s": server.first_token_s}
        finally:
            server.stop()
    one, many = SUMMARY["W1_8b_tp1"], SUMMARY[f"W1_8b_tp{gpu_count()}"]
    if one.get("output_tokens_per_s") and many.get("output_tokens_per_s"):
        SUMMARY["W1_8b_speedup"] = many["output_tokens_per_s"] / one["output_tokens_per_s"]
    log(f"W1 8B: {SUMMARY.get('W1_8b_tp1')} vs {SUMMARY.get(f'W1_8b_tp{gpu_count()}')}")


def phase_w2_70b() -> None:
    directory = Path("/tmp/llama70b")
    size = write_checkpoint(directory, SHAPES["70b"])
    server = start(directory, gpu_count(), max_rolling_batch_size=512,
                    max_rolling_batch_prefill_tokens=8192)
    try:
        level = bench(f"W2_tp{gpu_count()}_70b", directory, [
            "--concurrency", "500", "--num-prompts", "500", "--input-len", "467",
            "--output-len", "256", "--warmup", "2"])
        SUMMARY[f"W2_70b_tp{gpu_count()}"] = {
            "output_tokens_per_s": level.get("output_tokens_per_s"),
            "itl_mean_ms": level.get("itl_ms", {}).get("mean"),
            "ttft_p99_ms": level.get("ttft_ms", {}).get("p99"), "failed": level.get("failed"),
            "start_to_first_token_s": server.first_token_s, "checkpoint_GB": size}
    finally:
        server.stop()
    log(f"W2 70B: {SUMMARY.get(f'W2_70b_tp{gpu_count()}')}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for phase in sys.argv[1:]:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
    finally:
        (OUT / "native_tp_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
        print(json.dumps(SUMMARY, indent=1, default=str))
