"""engine=DeepSpeed on one GPU (H100 / H200): W1 and W2 of DESIGN.md §6, in one run.

    python3 bench/device/deepspeed_w1_w2.py

ckpt    a random bf16 checkpoint in Llama-3.1-8B's shape (DESIGN.md §6), built on the GPU and
        saved as sharded safetensors, with a word-level tokenizer ("w<id>" per token, so prompts
        have exact token lengths); reused if CKPT_DIR (default /tmp/llama8b) already holds one
serve   `serve` with engine=DeepSpeed, tensor_parallel_degree=1: DeepSpeed AutoTP (DeepSpeed's
        kernel injection, as DJL used it, has no Llama kernels), transformers' forward in bf16,
        the DeepSpeed engine's rolling batch; EOS is ignored so lengths are fixed
W1      batch 1, 128 in / 256 out: output tok/s (container.bench, 1 user, 4 requests)
W2      500 requests at once, 467 in / 256 out: output tok/s and mean inter-token latency

Prints a table and saves $OUT/deepspeed_w1_w2.json (plus container.bench's W1/W2 reports).

The GPU image has no deepspeed (nor pydantic, hjson): carry them as wheels in .whl at the repo
root, with the server's own missing dependencies; this script installs .whl/*.whl into
/tmp/site and re-runs itself when deepspeed cannot be imported. Wheels, made here:
    DS_BUILD_OPS=0 python3 -m pip wheel --no-deps -w .whl deepspeed==0.19.8
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
        hjson==3.1.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
        typing-inspection==0.4.5
Device tool: run(command="PYTHONUNBUFFERED=1 python3 bench/device/deepspeed_w1_w2.py",
                 carry=[".whl"], kind="nvidia-h100-x1" or "nvidia-h200", timeout_s=600)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import (CKPT, OUT, PORT, REPO, first_level, load_generator, log, start_serve,
                    write_llama8b)

SITE = Path("/tmp/site")
SUMMARY: dict = {"engine": "deepspeed"}


def ensure_packages() -> None:
    """Install the carried wheels once and re-run this script with them on the path."""
    try:
        import deepspeed  # noqa: F401
        return
    except ImportError:
        pass
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels or os.environ.get("DS_BENCH_REEXEC"):
        sys.exit("deepspeed is not importable and .whl holds no wheel that provides it: see this "
                 "script's docstring for the wheels to carry")
    log(f"installing {len(wheels)} carried wheels into {SITE}")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                           "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                           "--target", str(SITE), *map(str, wheels)])
    env = dict(os.environ, DS_BENCH_REEXEC="1", DS_BUILD_OPS="0",
               PYTHONPATH=os.pathsep.join([str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def start_server():
    import requests

    server = start_serve(CKPT, dict(
        OPTION_ENGINE="DeepSpeed", OPTION_TENSOR_PARALLEL_DEGREE="1", OPTION_DTYPE="bf16",
        OPTION_MAX_TOKENS="1024", OPTION_MAX_ROLLING_BATCH_SIZE="512",
        OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS="8192", SERVING_FRONTEND_WORKERS="8",
        SERVING_JOB_QUEUE_SIZE="4000"))
    SUMMARY["serve_start_to_first_token_s"] = server.first_token_s
    models = f"http://127.0.0.1:{PORT}/models"
    name = requests.get(models, timeout=10).json()["models"][0]["modelName"]
    SUMMARY["model"] = requests.get(f"{models}/{name}", timeout=10).json()
    return server


def load(label: str, users: int, prompts: int, input_len: int, output_len: int,
         warmup: int) -> dict:
    return first_level(load_generator(label, "deepspeed", CKPT, [
        "--concurrency", str(users), "--num-prompts", str(prompts), "--input-len",
        str(input_len), "--output-len", str(output_len), "--warmup", str(warmup)]))


def versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "transformers": transformers.__version__, "deepspeed": deepspeed.__version__}


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "deepspeed_w1_w2.json"
    path.write_text(json.dumps(SUMMARY, indent=2, default=str))
    rows = [("workload", "out tok/s", "ITL mean ms", "TTFT p50 ms", "E2E p50 ms", "failed")]
    for name in ("W1", "W2"):
        level = SUMMARY.get(name) or {}
        rows.append((name, _fmt(level.get("output_tokens_per_s")),
                     _fmt((level.get("itl_ms") or {}).get("mean")),
                     _fmt((level.get("ttft_ms") or {}).get("p50")),
                     _fmt((level.get("e2e_ms") or {}).get("p50")), _fmt(level.get("failed"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"# engine=DeepSpeed on {SUMMARY.get('env', {}).get('device', '?')}, "
          f"8B-shaped bf16, tp=1")
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print(f"saved {path}")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def main() -> int:
    ensure_packages()
    try:
        import container.bench  # noqa: F401  (the project's load generator)
    except ImportError:
        sys.exit("container.bench (the project's HTTP load generator) is missing from this "
                 "checkout: run this script from a checkout that has it")
    OUT.mkdir(parents=True, exist_ok=True)
    SUMMARY["env"] = versions()
    log(f"env: {SUMMARY['env']}")
    SUMMARY["checkpoint"] = write_llama8b(CKPT)
    server = start_server()
    try:
        SUMMARY["W1"] = load("deepspeed_W1_batch1_128in_256out", 1, 4, 128, 256, warmup=1)
        SUMMARY["W2"] = load("deepspeed_W2_500req_467in_256out", 500, 500, 467, 256, warmup=0)
    finally:
        server.stop()
        finish()
    return 0 if all(SUMMARY.get(w, {}).get("failed") == 0 for w in ("W1", "W2")) else 1


if __name__ == "__main__":
    sys.exit(main())
