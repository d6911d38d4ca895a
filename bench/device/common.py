"""What the device scripts share: paths, logging, the Llama-3.1-8B-shaped checkpoint with its
word-level tokenizer, and a `serve` driven by the project's load generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", REPO / "bench" / "results"))
CKPT = Path(os.environ.get("CKPT_DIR", "/tmp/llama8b"))
PORT = 8080
WORD_PROMPT = "w1 w2 w3"            # three tokens of the word tokenizer

if str(REPO) not in sys.path:       # container.bench, when run as bench/device/<script>.py
    sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def copy_bandwidth_tbps() -> float:
    """Device copy bandwidth, bytes read + written (the batch-1 roofline's denominator)."""
    import torch

    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)   # 2 GiB: many times L2
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 20
    return 2 * src.numel() * 2 / seconds / 1e12


def word_tokenizer(directory: Path, vocab: int) -> None:
    """Token i is the word "w<i>": prompts of exact lengths for random-weight checkpoints."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": None}))


def write_llama8b(directory: Path = CKPT) -> dict | None:
    """A random bf16 checkpoint in Llama-3.1-8B's shape (DESIGN.md §6), sharded safetensors,
    built on the GPU. None if one is there already, else its size and build time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (directory / "model.safetensors.index.json").exists():
        log(f"checkpoint already at {directory}")
        return None
    config = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="4GB")
    word_tokenizer(directory, config.vocab_size)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    built = {"weights_GB": weights / 1e9, "build_s": time.perf_counter() - started}
    log(f"checkpoint: {built}")
    return built


def start_serve(model_dir: Path, env: dict, output=None):
    """`serve` on PORT, once it has answered a first request; the returned server's
    first_token_s is that load time. Its output is shown, or written to `output` (a file)."""
    from container.bench.serve_process import BenchServer

    server = BenchServer(str(model_dir), env=dict(env, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])), output=output, port=PORT, cwd="/tmp")
    server.first_token_s = server.wait_first_token(WORD_PROMPT)
    log(f"serve start to first token: {server.first_token_s:.1f} s")
    return server


def load_generator(label: str, engine: str, tokenizer: Path, args: list[str]) -> dict:
    """`python -m container.bench` against the server on PORT; its report (results saved as
    OUT/<label>.json), {} if it wrote none."""
    command = [sys.executable, "-m", "container.bench", "--url", f"http://127.0.0.1:{PORT}",
               "--tokenizer", str(tokenizer), "--results-dir", str(OUT), "--label", label,
               "--engine", engine, *args]
    log(" ".join(command[2:]))
    subprocess.call(command, cwd=REPO)
    path = OUT / f"{label}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def first_level(report: dict) -> dict:
    """The figures of a one-level run (one concurrency)."""
    levels = report.get("levels")
    return levels[0] if levels else {}
