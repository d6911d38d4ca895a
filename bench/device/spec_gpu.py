"""GPU benchmark of speculative decoding through `serve` (for the lent H100/H200 machines).

    python3 bench/device/spec_gpu.py [phases...]     phases: ckpt draft serve

ckpt     the random bf16 Llama-3.1-8B-shaped checkpoint of native_gpu.py (shared with it)
draft    a 2-layer draft of the same shapes: the target's embeddings, first 2 layers and head
         (with random weights that is the only way a draft agrees with the target at all)
serve    W1 (batch 1, 128 in / 256 out) through `serve` four times: (a) no speculation, (b) the
         target as its own draft (acceptance 100 %: the cost of verification in isolation),
         (c) the 2-layer draft, (d) n-gram prompt lookup; tokens/s next to acceptance rate and
         tokens per step read from the engine's own figures (GET /models/{name})

Each configuration is k = 4 (SPEC_K to change). Verification steps run eagerly (CUDA graphs
hold one token per sequence); the draft's one-token steps replay its own graphs. Figures go to
$OUT/spec_gpu_summary.json and one JSON per run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import requests

from common import CKPT, OUT, PORT, first_level, load_generator, log, start_serve, write_llama8b

SUMMARY: dict = {}
DRAFT = Path(os.environ.get("DRAFT_DIR", "/tmp/llama8b-draft2"))
K = int(os.environ.get("SPEC_K", "4"))


def phase_ckpt() -> None:
    built = write_llama8b(CKPT)
    if built:
        SUMMARY["checkpoint"] = built


def phase_draft() -> None:
    """The target truncated to 2 layers, saved with its tokenizer."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    if (DRAFT / "config.json").exists():
        log(f"draft already at {DRAFT}")
        return
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(CKPT, num_hidden_layers=2, dtype=torch.bfloat16,
                                                 device_map="cuda")
    DRAFT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(DRAFT, max_shard_size="4GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(CKPT / name, DRAFT / name)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    SUMMARY["draft"] = {"weights_GB": weights / 1e9, "build_s": time.perf_counter() - started}
    log(f"draft: {SUMMARY['draft']}")


def _engine_stats() -> dict:
    name = requests.get(f"http://127.0.0.1:{PORT}/models", timeout=10).json()["models"][0][
        "modelName"]
    return requests.get(f"http://127.0.0.1:{PORT}/models/{name}", timeout=10).json()[0].get(
        "engineStats", {})


def _w1(label: str, spec: dict | None) -> dict:
    env = dict(OPTION_MAX_ROLLING_BATCH_SIZE="8", OPTION_MAX_MODEL_LEN="2048")
    if spec:
        env["OPTION_SPECULATIVE_CONFIG"] = json.dumps(spec)
    server = start_serve(CKPT, env)
    try:
        before = _engine_stats()
        level = first_level(load_generator(label, "native", CKPT, [
            "--concurrency", "1", "--num-prompts", "4", "--input-len", "128",
            "--output-len", "256"]))
        after = _engine_stats()
    finally:
        server.stop()
    drafted = after.get("spec_draft_tokens", 0) - before.get("spec_draft_tokens", 0)
    accepted = after.get("spec_accepted_tokens", 0) - before.get("spec_accepted_tokens", 0)
    steps = after.get("spec_verify_steps", 0) - before.get("spec_verify_steps", 0)
    emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
    result = {
        "speculative_config": spec,
        "output_tok_s_per_user": (level.get("per_user_tokens_per_s") or {}).get("mean")
        or level.get("output_tokens_per_s"),
        "failed": level.get("failed"), "itl_ms": level.get("itl_ms"),
        "tpot_ms": level.get("tpot_ms"),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_verify_step": emitted / steps if steps else None,
        "load_to_first_token_s": server.first_token_s, "level": level,
    }
    log(f"{label}: {result['output_tok_s_per_user']} tok/s, acceptance "
        f"{result['acceptance_rate']}, tokens/step {result['tokens_per_verify_step']}")
    return result


def phase_serve() -> None:
    runs = {
        "a_no_speculation": None,
        "b_self_draft": {"model": str(CKPT), "num_speculative_tokens": K},
        "c_draft_2_layers": {"model": str(DRAFT), "num_speculative_tokens": K},
        "d_ngram": {"method": "ngram", "num_speculative_tokens": K, "prompt_lookup_max": 4,
                    "prompt_lookup_min": 1},
    }
    for name, spec in runs.items():
        if spec and "model" in spec and not Path(spec["model"], "config.json").exists():
            SUMMARY[name] = "skipped: run the draft phase first"
            continue
        SUMMARY[name] = _w1(f"spec_W1_{name}", spec)


def finish() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    table = {name: {k: run.get(k) for k in ("output_tok_s_per_user", "acceptance_rate",
                                             "tokens_per_verify_step")}
             for name, run in SUMMARY.items() if isinstance(run, dict) and "level" in run}
    SUMMARY["table"] = table
    (OUT / "spec_gpu_summary.json").write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(json.dumps(table, indent=1, default=str))


if __name__ == "__main__":
    phases = sys.argv[1:] or ["ckpt", "draft", "serve"]
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for phase in phases:
            log(f"== {phase}")
            globals()[f"phase_{phase}"]()
    finally:
        finish()
