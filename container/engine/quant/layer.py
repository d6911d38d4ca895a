"""The FP8 variant of our linear layers, chosen at load: the same class (shards, loaders,
tensor-parallel reduction) with an FP8 weight, a float32 scale per output row and the FP8
matmul. Two ways in:

- `quantize_loaded(model, tp)`: after a bf16/fp32 checkpoint is loaded, each target layer's
  weight is quantized per output channel. A row-parallel layer holds a slice of each row, so
  the rows' largest magnitudes are agreed across ranks first (all-reduce max): every rank's
  scales are the whole row's, as at one rank.
- `prepare_for_checkpoint(model, ignored)`: before an FP8 checkpoint is loaded, target
  layers get empty FP8 weights and scale parameters whose loaders read the checkpoint's
  `weight_scale` (per channel, or one per tensor repeated over its rows) through the layer's
  own row split, so scales are sliced exactly as their weight rows are.

Targets: attention qkv and output, MLP gate/up and down. Embeddings, the LM head, norms,
routers and experts keep the model's type.
"""

from __future__ import annotations

import fnmatch
import re

import torch
import torch.distributed as dist
from torch import nn

from ...errors import StartupError
from ..layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                             RowParallelLinear)
from ..parallel import TensorParallel
from .fp8 import FP8, channel_amax, fp8_linear, quantize_per_channel

TARGETS = (QKVParallelLinear, MergedColumnParallelLinear, ColumnParallelLinear,
           RowParallelLinear)


class Fp8Matmul:
    """Mixed in before a linear class: its product reads the FP8 weight and its scales."""

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, bias)


_VARIANTS: dict[type, type] = {}


def fp8_variant(cls: type) -> type:
    if cls not in _VARIANTS:
        _VARIANTS[cls] = type(f"Fp8{cls.__name__}", (Fp8Matmul, cls), {})
    return _VARIANTS[cls]


def is_fp8(module: nn.Module) -> bool:
    return isinstance(module, Fp8Matmul)


def target_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, layer) of every linear layer of the decoder blocks that FP8 covers."""
    return [(path, module) for path, module in model.named_modules()
            if isinstance(module, TARGETS) and ".layers." in f".{path}"
            and not is_fp8(module)]


def _param(value: torch.Tensor, loader) -> nn.Parameter:
    param = nn.Parameter(value, requires_grad=False)
    if loader is not None:
        param.weight_loader = loader
    return param


def _to_variant(module: nn.Module, weight: torch.Tensor, scale: torch.Tensor,
                weight_loader=None, scale_loader=None) -> None:
    module.__class__ = fp8_variant(type(module))
    module.weight = _param(weight, weight_loader)
    module.weight_scale = _param(scale, scale_loader)


# -- quantize a loaded model -----------------------------------------------------------------

def quantize_loaded(model: nn.Module, tp: TensorParallel) -> list[str]:
    """Quantize every target layer in place; returns their paths. Frees each layer's
    high-precision weight as it goes, so the peak is the unquantized model plus one layer."""
    done = []
    for path, module in target_layers(model):
        weight = module.weight.data
        amax = channel_amax(weight)
        if isinstance(module, RowParallelLinear) and tp.enabled:
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=tp.group)
        q, scale = quantize_per_channel(weight, amax)
        module.weight = None
        del weight
        _to_variant(module, q, scale)
        done.append(path)
    return done


# -- load an FP8 checkpoint ------------------------------------------------------------------

class _ScaleRows:
    """A checkpoint scale seen as one value per output row, sliceable by rows like its
    weight: per channel ([N] or [N, 1]) as stored, per tensor (one value) repeated."""

    def __init__(self, tensor_slice):
        self.values = tensor_slice[...].reshape(-1).float()

    def __getitem__(self, rows: slice) -> torch.Tensor:
        count = rows.stop - rows.start
        if self.values.numel() == 1:
            return self.values.expand(count)
        return self.values[rows]


class _Fp8Only:
    """A checkpoint weight that must be stored as FP8 (a layer the checkpoint quantized)."""

    def __init__(self, tensor_slice, what: str):
        self.tensor_slice, self.what = tensor_slice, what

    def __getitem__(self, index) -> torch.Tensor:
        value = self.tensor_slice[index]
        if value.dtype != FP8:
            raise StartupError(f"{self.what}: the checkpoint stores this weight as {value.dtype}, "
                               "but its quantization_config says it is float8_e4m3fn")
        return value


def _weight_loader(module: nn.Module, path: str):
    load = module.weight.weight_loader

    def loader(param, tensor_slice, shard_id=None):
        load(param, _Fp8Only(tensor_slice, path), shard_id)
    return loader


def _scale_loader(module: nn.Module):
    if isinstance(module, RowParallelLinear):      # its output rows are whole on every rank
        def loader(param, tensor_slice, shard_id=None):
            values = _ScaleRows(tensor_slice)[0:param.shape[0]]
            if tuple(values.shape) != tuple(param.shape):
                raise ValueError(f"weight_scale: checkpoint shape {tuple(values.shape)} does "
                                 f"not match {tuple(param.shape)}")
            param.data.copy_(values)
        return loader
    load = module.load_shard                       # the weight's own row split

    def loader(param, tensor_slice, shard_id=None):
        load(param, _ScaleRows(tensor_slice), shard_id)
    return loader


def checkpoint_names(model: nn.Module, path: str) -> list[str]:
    """Checkpoint module names that our layer `path` holds (q/k/v in qkv_proj, ...)."""
    parent, leaf = path.rsplit(".", 1)
    stacked = getattr(model, "stacked_params", {}) or {}
    pieces = [fragment.strip(".") for fragment, (ours, _) in stacked.items()
              if ours.strip(".") == leaf]
    return [f"{parent}.{piece}" for piece in pieces] or [path]


def matches(name: str, patterns: list[str]) -> bool:
    """compressed-tensors `ignore` ("re:" regexes or exact names) and ModelOpt
    `exclude_modules` (glob patterns) against a checkpoint module name."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif name == pattern or fnmatch.fnmatchcase(name, pattern) \
                or name.endswith("." + pattern):
            return True
    return False


def prepare_for_checkpoint(model: nn.Module, ignored: list[str]) -> list[str]:
    """Give every target layer the checkpoint doesn't leave unquantized an FP8 weight and a
    scale to load into; returns their paths."""
    done = []
    for path, module in target_layers(model):
        names = checkpoint_names(model, path)
        skipped = [matches(name, ignored) for name in names]
        if all(skipped):
            continue
        if any(skipped):
            raise StartupError(f"the checkpoint quantizes only some of {', '.join(names)}, "
                               f"which the native engine stores as one matrix ({path})")
        weight = torch.empty(module.weight.shape, dtype=FP8, device=module.weight.device)
        scale = torch.ones(module.weight.shape[0], dtype=torch.float32,
                           device=module.weight.device)
        _to_variant(module, weight, scale, _weight_loader(module, path), _scale_loader(module))
        done.append(path)
    return done
