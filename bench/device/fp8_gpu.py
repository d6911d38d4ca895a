"""GPU benchmark of FP8 in the native engine (option.quantize=fp8, option.kv_cache_dtype=fp8).

    python3 bench/device/fp8_gpu.py [phases...]     phases: env tests ckpt checks w1 w2 max kv

env      device, torch, Triton; copy bandwidth (the batch-1 roofline)
tests    tests/test_fp8_kernels.py on the GPU (_scaled_mm against fake-quantized activations,
         the FP8 GEMV)
ckpt     the random bf16 Llama-3.1-8B-shaped checkpoint of native_gpu.py (shared, CKPT_DIR)
checks   in-process on the 8B checkpoint: last-position logits of bf16 vs quantize=fp8
         (relative error, top-1 agreement) and, per projection of layer 0, the fast FP8 matmul
         (GEMV at 1 token, _scaled_mm at 64) against the reference (dequantized weights,
         activations quantized per token as _scaled_mm sees them)
w1       W1 through serve, batch 1, 128/256: bf16, then quantize=fp8
w2       W2 through serve, 500 requests at once, 467/256: bf16, then quantize=fp8
max      max throughput, 2000 requests 128/128 at once, quantize=fp8 (+ kv_cache_dtype=fp8)
kv       kv_cache_dtype=fp8 against auto: KV blocks, and the most sequences running at once
         under 1000 requests of 1024/128 (polled from GET /models/{name})

A 10-minute call fits "env ckpt checks" or "ckpt w1", "ckpt w2", "ckpt max kv" (the checkpoint
is written once per machine). Figures are saved under $OUT as fp8_gpu_summary.json and a
short table is printed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import requests

from common import (CKPT, OUT, PORT, REPO, copy_bandwidth_tbps, first_level, load_generator,
                    log, start_serve, write_llama8b)

SUMMARY: dict = {}
SERVE_ENV = dict(OPTION_MAX_ROLLING_BATCH_SIZE="512", OPTION_MAX_MODEL_LEN="2048",
                 OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS="8192", SERVING_FRONTEND_WORKERS="8",
                 SERVING_JOB_QUEUE_SIZE="4000", OPTION_TENSOR_PARALLEL_DEGREE="1")
FP8 = dict(OPTION_QUANTIZE="fp8")
FP8_KV = dict(OPTION_KV_CACHE_DTYPE="fp8")


def phase_env() -> None:
    import torch
    import triton

    SUMMARY["env"] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": triton.__version__, "copy_TBps": copy_bandwidth_tbps(),
                      "capability": list(torch.cuda.get_device_capability())}
    log(f"env: {SUMMARY['env']}")


def phase_tests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x",
                            "tests/test_fp8_kernels.py", "-p", "no:cacheprovider"], cwd=REPO)
    SUMMARY["fp8_gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    log(f"fp8 gpu tests: {SUMMARY['fp8_gpu_tests']}")


def phase_ckpt() -> None:
    built = write_llama8b(CKPT)
    if built:
        SUMMARY["checkpoint"] = built


def _runner(plan):
    import torch

    from container.engine.model_config import ModelConfig
    from container.engine.model_runner import ModelRunner
    from container.engine.parallel import TensorParallel

    runner = ModelRunner(ModelConfig.from_dir(CKPT), str(CKPT), 2048, torch.bfloat16,
                         torch.device("cuda"), TensorParallel(), 16, quant=plan)
    runner.allocate_kv_cache(256)
    return runner


def _simulate_fp8(runner):
    """Round the bf16 runner's decoder projections to FP8 per output channel in place, and
    fake-quantize their multi-token inputs per token (what _scaled_mm sees)."""
    import torch

    from container.engine.quant.fp8 import dequantize, fake_quantize_per_token, \
        quantize_per_channel

    for layer in runner.model.model.layers:
        for module in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_up_proj, layer.mlp.down_proj):
            with torch.no_grad():
                q, scale = quantize_per_channel(module.weight)
                module.weight.copy_(dequantize(q, scale, module.weight.dtype))
            module.register_forward_pre_hook(
                lambda _m, args: (fake_quantize_per_token(args[0]),) + args[1:]
                if args[0].shape[0] > 1 else None)
    return runner


def _last_logits(runner, prompts):
    import torch

    from container.engine.model_runner import StepPlan
    from container.engine.scheduler import ScheduledSeq
    from container.engine.sequence import Sequence
    from container.workers.protocol import SamplingParams

    rows = []
    for prompt in prompts:
        seq = Sequence("p", list(prompt), SamplingParams(max_new_tokens=1))
        seq.block_ids = list(range(-(-len(prompt) // runner.block_size)))
        rows.append(runner.execute(StepPlan.build([ScheduledSeq(seq, len(prompt))],
                                                  runner.block_size))[0].float())
    return torch.stack(rows)


def phase_checks() -> None:
    import gc

    import torch

    from container.bench.offline import random_token_prompts
    from container.engine.quant.fp8 import (fake_quantize_per_token, fp8_linear,
                                            linear_reference)
    from container.engine.quant.plan import QuantPlan

    prompts = random_token_prompts(128256, 8, 128)
    bf16 = _runner(QuantPlan())
    reference = _last_logits(bf16, prompts)
    # the same bf16 model with what FP8 changes simulated (weights rounded per channel,
    # multi-token activations per token): ours should sit near it; if bf16 vs this reference
    # is as far apart as bf16 vs ours, the distance is the random model's, not a fault
    simulated = _last_logits(_simulate_fp8(bf16), prompts)
    del bf16
    gc.collect()
    torch.cuda.empty_cache()
    fp8 = _runner(QuantPlan(quantize_at_load=True))
    ours = _last_logits(fp8, prompts)
    rel = ((ours - reference).norm(dim=-1) / reference.norm(dim=-1)).tolist()
    top1 = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    SUMMARY["logits_fp8_vs_bf16"] = {"relative_error_per_prompt": rel, "top1_agreement": top1}

    def distance(a, b):
        return {"relative_error_mean": ((a - b).norm(dim=-1) / b.norm(dim=-1)).mean().item(),
                "top1_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}

    SUMMARY["logits_fp8_vs_simulated_fp8"] = distance(ours, simulated)
    SUMMARY["logits_simulated_fp8_vs_bf16"] = distance(simulated, reference)
    log(f"fp8 vs simulated: {SUMMARY['logits_fp8_vs_simulated_fp8']}; simulated vs bf16: "
        f"{SUMMARY['logits_simulated_fp8_vs_bf16']}")
    log(f"logits fp8 vs bf16: {SUMMARY['logits_fp8_vs_bf16']}")
    layer = fp8.model.model.layers[0]
    matmuls = {}
    for name, module in (("qkv", layer.self_attn.qkv_proj), ("o", layer.self_attn.o_proj),
                         ("gate_up", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj)):
        for tokens in (1, 64):
            x = torch.randn(tokens, module.weight.shape[1], device="cuda", dtype=torch.bfloat16)
            got = fp8_linear(x, module.weight, module.weight_scale).float()
            seen = x if tokens == 1 else fake_quantize_per_token(x)    # GEMV: x unquantized
            expected = linear_reference(seen.float(), module.weight, module.weight_scale)
            error = ((got - expected).norm() / expected.norm()).item()
            for _ in range(5):
                fp8_linear(x, module.weight, module.weight_scale)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(True), torch.cuda.Event(True)
            start.record()
            for _ in range(50):
                fp8_linear(x, module.weight, module.weight_scale)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 50
            matmuls[f"{name}_m{tokens}"] = {"rel_err_vs_reference": error, "ms": ms,
                                            "weight_TBps": module.weight.numel() / ms / 1e9}
    SUMMARY["fp8_matmul_vs_reference"] = matmuls
    log(f"fp8 matmuls: {matmuls}")
    del fp8, layer
    gc.collect()
    torch.cuda.empty_cache()


def _serve_run(label: str, env: dict, args: list[str], poll: bool = False) -> dict:
    server = start_serve(CKPT, dict(SERVE_ENV, **env))
    result: dict = {"start_to_first_token_s": server.first_token_s}
    try:
        result.update(_described())
        peak = _poll_running() if poll else None
        level = first_level(load_generator(label, "native", CKPT, args))
        result.update(_figures(level))
        if peak is not None:
            peak["stop"] = True
            peak["thread"].join(timeout=5)
            result["max_running_sequences"] = peak["max"]
            result["preemptions"] = _described().get("preemptions")
    finally:
        server.stop()
    log(f"{label}: {result}")
    return result


def _figures(level: dict) -> dict:
    """The load generator's figures this table reports (container/bench/metrics.py)."""
    def p50(key):
        return (level.get(key) or {}).get("p50")
    return {"completed": level.get("completed"), "failed": level.get("failed"),
            "duration_s": level.get("duration_s"),
            "output_tokens_per_s": level.get("output_tokens_per_s"),
            "ttft_p50_ms": p50("ttft_ms"), "tpot_p50_ms": p50("tpot_ms"),
            "itl_p50_ms": p50("itl_ms"), "per_user_tok_s_p50": p50("per_user_tokens_per_s")}


def _described() -> dict:
    base = f"http://127.0.0.1:{PORT}"
    name = requests.get(f"{base}/models", timeout=10).json()["models"][0]["modelName"]
    described = requests.get(f"{base}/models/{name}", timeout=10).json()[0]
    stats = described.get("engineStats", {})
    return {"quantization": described.get("quantization"),
            "kv_blocks_total": stats.get("kv_blocks_total"),
            "preemptions": stats.get("preemptions")}


def _poll_running() -> dict:
    """The most sequences running at once, polled every 0.2 s until told to stop."""
    state = {"max": 0, "stop": False}
    base = f"http://127.0.0.1:{PORT}"

    def poll():
        name = requests.get(f"{base}/models", timeout=10).json()["models"][0]["modelName"]
        while not state["stop"]:
            try:
                stats = requests.get(f"{base}/models/{name}", timeout=5).json()[0]["engineStats"]
                state["max"] = max(state["max"], int(stats.get("running", 0)))
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.2)
    state["thread"] = threading.Thread(target=poll, daemon=True)
    state["thread"].start()
    return state


W1 = ["--concurrency", "1", "--num-prompts", "4", "--input-len", "128", "--output-len", "256"]
W2 = ["--concurrency", "500", "--num-prompts", "500", "--input-len", "467", "--output-len",
      "256", "--warmup", "0"]
MAX = ["--concurrency", "2000", "--num-prompts", "2000", "--input-len", "128", "--output-len",
       "128", "--warmup", "0"]
KV = ["--concurrency", "1000", "--num-prompts", "1000", "--input-len", "1024", "--output-len",
      "128", "--warmup", "0"]


def phase_w1() -> None:
    SUMMARY["W1_bf16"] = _serve_run("fp8_W1_bf16", {}, W1)
    SUMMARY["W1_fp8"] = _serve_run("fp8_W1_fp8", FP8, W1)


def phase_w2() -> None:
    SUMMARY["W2_bf16"] = _serve_run("fp8_W2_bf16", {}, W2)
    SUMMARY["W2_fp8"] = _serve_run("fp8_W2_fp8", FP8, W2)


def phase_max() -> None:
    SUMMARY["max_fp8"] = _serve_run("fp8_max_2000x128_128", dict(FP8, **FP8_KV), MAX)


def phase_kv() -> None:
    # room for 1024 sequences a step, so the KV cache (not the batch cap) limits admission
    wide = dict(OPTION_MAX_ROLLING_BATCH_SIZE="1024")
    SUMMARY["kv_auto"] = _serve_run("fp8_kv_auto", wide, KV, poll=True)
    SUMMARY["kv_fp8"] = _serve_run("fp8_kv_fp8", dict(wide, **FP8_KV), KV, poll=True)


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table() -> str:
    rows = [("run", "kv blocks", "out tok/s", "TPOT p50 ms", "TTFT p50 ms", "max running")]
    for key in ("W1_bf16", "W1_fp8", "W2_bf16", "W2_fp8", "max_fp8", "kv_auto", "kv_fp8"):
        run = SUMMARY.get(key)
        if not run:
            continue
        rows.append((key, str(run.get("kv_blocks_total", "")),
                     _number(run.get("output_tokens_per_s"), 1),
                     _number(run.get("tpot_p50_ms"), 2), _number(run.get("ttft_p50_ms"), 1),
                     str(run.get("max_running_sequences", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fp8_gpu_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(json.dumps(SUMMARY, indent=1, default=str)[-6000:])
    print(table())


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "tests", "ckpt", "checks", "w1", "w2", "max", "kv"]
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for phase in phases:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
    finally:
        finish()
