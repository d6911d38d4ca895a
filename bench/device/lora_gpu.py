"""GPU benchmark of multi-LoRA serving in the native engine (issue: multi-LoRA serving).

    python3 bench/device/lora_gpu.py [phases...]     phases: env tests ckpt adapters w1 w2

env       device, torch, Triton
tests     tests/test_lora_kernels.py and tests/test_gpu_lora.py on the GPU (shrink/expand
          against PyTorch; `serve` with LoRA in the decode graphs against a merged reference)
ckpt      the random bf16 Llama-3.1-8B-shaped checkpoint (shared with native_gpu.py, CKPT_DIR)
adapters  8 random rank-16 PEFT adapters on all linear layers of it (a0..a7, LORA_DIR)
w1        W1 through serve, batch 1, 128/256: the base model (LoRA off), then every request
          naming adapter a0 (LoRA on, max_loras=8)
w2        W2 through serve, 500 requests at once, 467/256: the base model (LoRA off), then the
          requests spread over the 8 adapters in turn (LoRA on, max_loras=8)

Targets: W1 with an adapter >= 85 % of W1 without; W2 over 8 adapters >= 80 % of base W2.
Figures are saved under $OUT as lora_gpu_summary.json; a short table is printed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import CKPT, OUT, REPO, first_level, load_generator, log, start_serve, write_llama8b

sys.path.insert(0, str(REPO / "tests"))       # the PEFT-layout adapter writer the tests use

SUMMARY: dict = {}
LORA_DIR = Path(os.environ.get("LORA_DIR", "/tmp/lora8b"))
ADAPTERS = [f"a{i}" for i in range(8)]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SERVE_ENV = dict(OPTION_MAX_ROLLING_BATCH_SIZE="512", OPTION_MAX_MODEL_LEN="2048",
                 OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS="8192", SERVING_FRONTEND_WORKERS="8",
                 SERVING_JOB_QUEUE_SIZE="4000", OPTION_TENSOR_PARALLEL_DEGREE="1")
LORA_ENV = dict(OPTION_ENABLE_LORA="true", OPTION_MAX_LORAS="8", OPTION_MAX_LORA_RANK="16",
                OPTION_ADAPTERS=",".join(f"{a}={LORA_DIR / a}" for a in ADAPTERS))
W1 = ["--concurrency", "1", "--num-prompts", "4", "--input-len", "128", "--output-len", "256"]
W2 = ["--concurrency", "500", "--num-prompts", "500", "--input-len", "467", "--output-len",
      "256", "--warmup", "0"]


def phase_env() -> None:
    import torch
    import triton

    SUMMARY["env"] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": triton.__version__}
    log(f"env: {SUMMARY['env']}")


def phase_tests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            "tests/test_lora_kernels.py", "tests/test_gpu_lora.py"], cwd=REPO)
    SUMMARY["lora_gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    log(f"lora gpu tests: {SUMMARY['lora_gpu_tests']}")


def phase_ckpt() -> None:
    built = write_llama8b(CKPT)
    if built:
        SUMMARY["checkpoint"] = built


def phase_adapters() -> None:
    from lora_helpers import write_random_peft_adapter

    for seed, name in enumerate(ADAPTERS):
        if not (LORA_DIR / name / "adapter_config.json").is_file():
            write_random_peft_adapter(CKPT, LORA_DIR / name, 16, 32, ALL_LINEAR, seed,
                                      std=0.02, device="cuda")
    SUMMARY["adapters"] = {"count": len(ADAPTERS), "rank": 16, "targets": ALL_LINEAR,
                           "MB_each": (LORA_DIR / "a0" / "adapter_model.safetensors")
                           .stat().st_size / 1e6}
    log(f"adapters: {SUMMARY['adapters']}")


def _serve_run(label: str, env: dict, args: list[str]) -> dict:
    server = start_serve(CKPT, dict(SERVE_ENV, **env))
    result: dict = {"start_to_first_token_s": server.first_token_s}
    try:
        level = first_level(load_generator(label, "native", CKPT, args))
        p50 = lambda key: (level.get(key) or {}).get("p50")   # noqa: E731
        result.update({"completed": level.get("completed"), "failed": level.get("failed"),
                       "output_tokens_per_s": level.get("output_tokens_per_s"),
                       "ttft_p50_ms": p50("ttft_ms"), "tpot_p50_ms": p50("tpot_ms"),
                       "itl_p50_ms": p50("itl_ms")})
    finally:
        server.stop()
    log(f"{label}: {result}")
    return result


def _ratio(key: str, lora: str, base: str) -> None:
    a, b = SUMMARY.get(lora, {}), SUMMARY.get(base, {})
    if a.get("output_tokens_per_s") and b.get("output_tokens_per_s"):
        SUMMARY[key] = a["output_tokens_per_s"] / b["output_tokens_per_s"]


def phase_w1() -> None:
    SUMMARY["W1_base"] = _serve_run("lora_W1_base", {}, W1)
    SUMMARY["W1_adapter"] = _serve_run("lora_W1_adapter_a0", LORA_ENV, W1 + ["--adapters", "a0"])
    _ratio("W1_ratio", "W1_adapter", "W1_base")


def phase_w2() -> None:
    SUMMARY["W2_base"] = _serve_run("lora_W2_base", {}, W2)
    SUMMARY["W2_8_adapters"] = _serve_run("lora_W2_8_adapters", LORA_ENV,
                                          W2 + ["--adapters", ",".join(ADAPTERS)])
    _ratio("W2_ratio", "W2_8_adapters", "W2_base")


def table() -> str:
    rows = [("run", "out tok/s", "TPOT p50 ms", "TTFT p50 ms", "failed")]
    for key in ("W1_base", "W1_adapter", "W2_base", "W2_8_adapters"):
        run = SUMMARY.get(key)
        if run:
            rows.append((key, f"{run.get('output_tokens_per_s') or 0:.1f}",
                         f"{run.get('tpot_p50_ms') or 0:.2f}", f"{run.get('ttft_p50_ms') or 0:.1f}",
                         str(run.get("failed"))))
    for key, target in (("W1_ratio", 0.85), ("W2_ratio", 0.80)):
        if key in SUMMARY:
            rows.append((key, f"{SUMMARY[key]:.3f}", f"target {target}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lora_gpu_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(table())


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "tests", "ckpt", "adapters", "w1", "w2"]
    try:
        for phase in phases:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
    finally:
        finish()
