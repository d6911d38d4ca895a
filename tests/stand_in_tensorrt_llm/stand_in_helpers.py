"""Test helpers around the STAND-IN tensorrt_llm package (not TensorRT-LLM; see README.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

STAND_IN_DIR = Path(__file__).resolve().parent
REPO = STAND_IN_DIR.parent.parent


def stand_in_pythonpath() -> str:
    """PYTHONPATH for a `serve` child process: this checkout, then the stand-in package."""
    return os.pathsep.join([str(REPO), str(STAND_IN_DIR)])


def use_stand_in(monkeypatch, record_file: Path) -> None:
    """Import the stand-in as `tensorrt_llm` in this process, recording into record_file.
    Call forget_stand_in() when done: modules imported meanwhile stay in sys.modules."""
    monkeypatch.syspath_prepend(str(STAND_IN_DIR))
    monkeypatch.setenv("STAND_IN_TRTLLM_RECORD", str(record_file))
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)


def forget_stand_in() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


def records(record_file: Path, event: str | None = None) -> list[dict]:
    if not Path(record_file).is_file():
        return []
    lines = [json.loads(line) for line in Path(record_file).read_text().splitlines() if line]
    return [r for r in lines if event is None or r["event"] == event]


def make_checkpoint(directory: Path, tokenizer_source: Path | None = None) -> Path:
    """A checkpoint directory the stand-in can 'compile': a real trained tokenizer, a
    config.json, and a weights file whose bytes nobody reads."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_source is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).write_bytes((tokenizer_source / name).read_bytes())
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    else:
        tokenizer = build_tokenizer(directory)
    eos = tokenizer.token_to_id("<|end|>")
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(), "eos_token_id": eos,
        "max_position_embeddings": 4096}))
    (directory / "model.safetensors").write_bytes(b"stand-in weights: never read")
    return directory
