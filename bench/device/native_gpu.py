"""GPU benchmark of the native engine, all in one run (for the lent H100/H200 machines).

    python3 bench/device/native_gpu.py [phases...]     phases: env tests ckpt serve offline

env      measured ceilings: device copy bandwidth (bytes read + written) and bf16 matmul rate
tests    tests/test_gpu.py (logits vs transformers, fast path vs reference path)
ckpt     a random bf16 checkpoint in Llama-3.1-8B's shape (DESIGN.md §6), saved as sharded
         safetensors, with a word-level tokenizer ("w<id>" per token: exact prompt lengths)
serve    `serve` + the HTTP load generator: W1 (batch 1, 128/256), W3 (100 users, 256/128),
         W2 (500 requests at once, 467/256); and load time to first token
offline  W4: the engine in-process, 256 x 128/128, next to transformers generate_batch (each
         3 times, median); generate at batch 1 (128/256) and 64 (128/128)

Figures are saved as JSON under $OUT (or bench/results) and printed as a table at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import (CKPT, OUT, REPO, copy_bandwidth_tbps, first_level, load_generator, log,
                    start_serve, write_llama8b)

SUMMARY: dict = {}


def phase_env() -> None:
    import torch
    import triton

    device = torch.cuda.get_device_name()
    copy_tbs = copy_bandwidth_tbps()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    tflops = 2 * 8192 ** 3 / (start.elapsed_time(end) / 1000 / 10) / 1e12
    del a, b
    torch.cuda.empty_cache()
    SUMMARY["env"] = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
                      "copy_TBps": copy_tbs, "bf16_matmul_TFLOPs": tflops}
    log(f"env: {SUMMARY['env']}")


def phase_tests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "tests/test_gpu.py",
                            "-p", "no:cacheprovider"], cwd=REPO)
    SUMMARY["gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    log(f"gpu tests: {SUMMARY['gpu_tests']}")
    if code != 0:
        finish()
        sys.exit(code)


def phase_ckpt() -> None:
    built = write_llama8b(CKPT)
    if built:
        SUMMARY["checkpoint"] = built


def phase_serve(workloads: tuple[str, ...] = ("W1", "W3", "W2")) -> None:
    server = start_serve(CKPT, dict(
        OPTION_MAX_ROLLING_BATCH_SIZE="512", OPTION_MAX_MODEL_LEN="2048",
        OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS="8192", SERVING_FRONTEND_WORKERS="8",
        SERVING_JOB_QUEUE_SIZE="4000"))
    SUMMARY["serve_start_to_first_token_s"] = server.first_token_s
    runs = {
        "W1": ("W1_batch1_128in_256out", ["--concurrency", "1", "--num-prompts", "4",
                                          "--input-len", "128", "--output-len", "256"]),
        "W3": ("W3_100users_256in_128out", ["--concurrency", "100", "--num-prompts", "300",
                                            "--input-len", "256", "--output-len", "128"]),
        "W2": ("W2_500req_467in_256out", ["--concurrency", "500", "--num-prompts", "500",
                                          "--input-len", "467", "--output-len", "256",
                                          "--warmup", "0"]),
    }
    try:
        for name in workloads:
            label, args = runs[name]
            level = first_level(load_generator(label, "native", CKPT, args))
            if level:
                SUMMARY[name] = level
    finally:
        server.stop()


def phase_serve_w1_only() -> None:
    phase_serve(("W1",))


def run_w4(repeats: int = 3) -> list | None:
    """W4 offline (256 x 128/128), each engine `repeats` times on fresh prompts (the median
    run reported; the first run of a process can be slower): our engine, then transformers
    generate_batch, one process; the results list of its JSON report, or None if it failed."""
    command = [sys.executable, "-m", "container.bench.offline", "--model-dir", str(CKPT),
               "--num-prompts", "256", "--input-len", "128", "--output-len", "128",
               "--option", "max_rolling_batch_size=256", "--option", "max_model_len=2048",
               "--option", "max_rolling_batch_prefill_tokens=16384",
               "--peers", "generate_batch", "--repeats", str(repeats),
               "--label", "W4_offline_256x128_128",
               "--results-dir", str(OUT)]
    subprocess.call(command, cwd=REPO)
    path = OUT / "W4_offline_256x128_128.json"
    return json.loads(path.read_text())["results"] if path.exists() else None


def phase_offline() -> None:
    w4 = run_w4()
    if w4 is not None:
        SUMMARY["W4"] = w4
    command = [sys.executable, "-m", "container.bench.offline", "--model-dir", str(CKPT),
               "--num-prompts", "1", "--input-len", "128", "--output-len", "256",
               "--option", "max_model_len=2048", "--peers", "generate", "--peer-batch", "1",
               "--label", "peer_generate_bs1_128_256", "--results-dir", str(OUT)]
    subprocess.call(command, cwd=REPO)
    command = [sys.executable, "-m", "container.bench.offline", "--model-dir", str(CKPT),
               "--num-prompts", "64", "--input-len", "128", "--output-len", "128",
               "--option", "max_model_len=2048", "--peers", "generate", "--peer-batch", "64",
               "--label", "peer_generate_bs64_128_128", "--results-dir", str(OUT)]
    subprocess.call(command, cwd=REPO)
    for label in ("peer_generate_bs1_128_256", "peer_generate_bs64_128_128"):
        path = OUT / f"{label}.json"
        if path.exists():
            SUMMARY[label] = json.loads(path.read_text())["results"]


def phase_profile() -> None:
    """Where a decode step's time goes: graph replay alone at several batch sizes, the big
    GEMVs at M=1 against their bytes, and the engine's own phase timers on W2 offline."""
    import torch

    from container.bench.offline import our_engine, random_token_prompts
    from container.config.loader import load_config
    from container.engine.service import NativeService
    from container.workers.dist_env import DistEnv

    env = {"OPTION_MAX_ROLLING_BATCH_SIZE": "512", "OPTION_MAX_MODEL_LEN": "2048",
           "OPTION_TENSOR_PARALLEL_DEGREE": "1"}
    service = NativeService(load_config(str(CKPT), env), DistEnv(0, 1, 0, 1))
    runner = service.runner
    graphs = runner.graphs
    timing = {}
    for batch in (1, 64, 256, 512):
        graphs.seq_lens[:batch].fill_(600)
        graphs.tables[:batch, :38].copy_(torch.arange(38, device="cuda").repeat(batch, 1))
        graph = graphs.graphs[batch]
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        timing[batch] = start.elapsed_time(end) / 20
    SUMMARY["graph_replay_ms_ctx600"] = timing
    log(f"graph replay ms (context 600): {timing}")
    layer = runner.model.model.layers[0]
    gemv = {}
    for name, weight in (("qkv", layer.self_attn.qkv_proj.weight),
                         ("o", layer.self_attn.o_proj.weight),
                         ("gate_up", layer.mlp.gate_up_proj.weight),
                         ("down", layer.mlp.down_proj.weight),
                         ("lm_head", runner.model.lm_head.weight)):
        x = torch.randn(1, weight.shape[1], device="cuda", dtype=weight.dtype)
        for _ in range(5):
            torch.nn.functional.linear(x, weight)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        for _ in range(50):
            torch.nn.functional.linear(x, weight)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / 50
        from container.engine.kernels.gemv import gemv as triton_gemv

        expected = torch.nn.functional.linear(x, weight).float()
        got = triton_gemv(x, weight).float()
        error = ((got - expected).norm() / expected.norm()).item()
        start.record()
        for _ in range(50):
            triton_gemv(x, weight)
        end.record()
        torch.cuda.synchronize()
        triton_ms = start.elapsed_time(end) / 50
        gemv[name] = {"ms": ms, "TBps": weight.numel() * 2 / ms / 1e9,
                      "triton_ms": triton_ms, "triton_TBps": weight.numel() * 2 / triton_ms / 1e9,
                      "triton_rel_err": error}
    SUMMARY["gemv_m1"] = gemv
    log(f"GEMV at M=1: {gemv}")
    del service, runner, graphs, graph, layer, weight, x
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    prompts = random_token_prompts(128256, 500, 467)
    result = our_engine(str(CKPT), prompts, 256, {"max_rolling_batch_size": "512",
                                                  "max_model_len": "2048",
                                                  "max_rolling_batch_prefill_tokens": "8192"})
    SUMMARY["W2_offline"] = result
    log(f"W2 offline: {result}")


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    weights = SUMMARY.get("checkpoint", {}).get("weights_GB") or 16.06
    copy = SUMMARY.get("env", {}).get("copy_TBps")
    if copy:
        SUMMARY["roofline_batch1_tok_s"] = copy * 1e12 / (weights * 1e9)
    (OUT / "native_gpu_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(json.dumps(SUMMARY, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "tests", "ckpt", "serve", "offline"]
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for phase in phases:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
    finally:
        finish()
