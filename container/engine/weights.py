"""Load a safetensors checkpoint (single file or sharded with an index) into our model.

Each parameter's weight_loader gets a lazy `get_slice` handle and reads only the rows/columns
this rank keeps; nothing else of the tensor is read from disk.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
from safetensors import safe_open

from ..errors import StartupError

log = logging.getLogger(__name__)


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise StartupError(f"{index} names shards that are missing: {', '.join(missing[:5])}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")):
        raise StartupError(f"{model_dir} holds PyTorch .bin weights only: convert them to "
                           "safetensors (save_pretrained(..., safe_serialization=True))")
    raise StartupError(f"no *.safetensors weights in {model_dir}")


class CheckpointSource(Protocol):
    """Where weights come from: each opened file behaves like safetensors' safe_open handle
    (keys(), get_slice(name) -> object sliceable like a tensor, read lazily)."""

    description: str

    def open_files(self) -> Iterable[AbstractContextManager]:
        ...


class LocalCheckpoint:
    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.description = str(self.model_dir)

    def open_files(self):
        for path in checkpoint_files(self.model_dir):
            yield safe_open(str(path), framework="pt", device="cpu")


def load_whole(param: torch.Tensor, tensor_slice, shard_id=None) -> None:
    """Parameters every rank keeps whole (norms)."""
    value = tensor_slice[:]
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"checkpoint shape {tuple(value.shape)} does not match {tuple(param.shape)}")
    param.data.copy_(value)


def load_weights(model: torch.nn.Module, source: str | Path | CheckpointSource,
                 skip: Callable[[str], bool] | None = None) -> None:
    """skip: checkpoint tensors to pass over without a word (an FP8 checkpoint's activation
    scales, which our model has no place for)."""
    if isinstance(source, (str, Path)):
        source = LocalCheckpoint(source)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for opened in source.open_files():
        with opened as handle:
            for name in handle.keys():
                if skip is not None and skip(name):
                    continue
                mapped = model.map_checkpoint_name(name)
                if mapped is None:
                    continue
                target, shard = mapped
                param = params.get(target)
                if param is None:
                    log.warning("checkpoint tensor %s has no place in the model; skipped", name)
                    continue
                loader = getattr(param, "weight_loader", load_whole)
                with torch.no_grad():
                    loader(param, handle.get_slice(name), shard)
                loaded.add(target)
    missing = sorted(set(params) - loaded)
    if missing:
        raise StartupError(f"the checkpoint in {source.description} lacks weights for "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
