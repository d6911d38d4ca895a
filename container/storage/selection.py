"""Which files of a remote checkpoint are worth fetching.

The engines read safetensors only, so pickled weights (.bin, .pt ...) are skipped whenever
safetensors are there; in streaming mode the safetensors themselves stay remote.
"""

from __future__ import annotations

from fnmatch import fnmatch

PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")

# Top-level files of a Hub repo the engine and tokenizer read.
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt",
                "vocab.txt", "*.jinja")


def is_weights(name: str) -> bool:
    return name.endswith(".safetensors") or name.endswith(PICKLED_WEIGHTS)


def select_files(names: list[str], stream: bool = False) -> list[str]:
    """Everything under an S3 prefix, less the weights we would not read."""
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    chosen = []
    for name in names:
        if name.endswith(".safetensors") and stream:
            continue
        if name.endswith(PICKLED_WEIGHTS) and has_safetensors:
            continue
        chosen.append(name)
    return chosen


def select_hub_files(names: list[str], stream: bool = False) -> list[str]:
    """Top-level config, tokenizer and safetensors files of a Hub repo (no subfolders: they hold
    other formats, e.g. onnx/ or original/)."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if any(fnmatch(n, p) for p in HUB_PATTERNS)]
    return select_files(wanted, stream)
