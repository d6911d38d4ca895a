"""Wrap a loaded model's target linear layers in LoRALinear, for any family.

Which checkpoint modules a layer of ours holds comes from the family's own name mapping
(`stacked_params`: q/k/v -> qkv_proj, gate/up -> gate_up_proj), so a new family needs nothing
here. Layers a family builds differently (experts, fused checkpoint matrices) stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                             RowParallelLinear)
from ..layers.lora import LoRAContext, LoRALinear

_WRAPPABLE = (QKVParallelLinear, MergedColumnParallelLinear, ColumnParallelLinear,
              RowParallelLinear)


def _checkpoint_names(model, leaf: str) -> list[str]:
    """Checkpoint module names stored in our module `leaf`, in output order."""
    stacked = getattr(model, "stacked_params", {}) or {}
    pieces = [(shard, fragment.strip(".")) for fragment, (ours, shard) in stacked.items()
              if ours.strip(".") == leaf]
    if pieces:
        order = {"q": 0, "k": 1, "v": 2}
        return [name for _, name in sorted(pieces, key=lambda p: order.get(p[0], p[0]))]
    return [leaf]


def attach_lora(model: nn.Module, targets: set[str], max_loras: int, max_rank: int,
                dtype: torch.dtype) -> tuple[LoRAContext, dict[str, LoRALinear]]:
    """Replace every wrappable layer holding one of `targets`; returns the shared context and
    path -> layer (paths as before wrapping, which is how checkpoint names map onto them)."""
    context = LoRAContext(max_loras, dtype)
    layers: dict[str, LoRALinear] = {}
    for path, module in list(model.named_modules()):
        if not isinstance(module, _WRAPPABLE) or "." not in path:
            continue
        parent_path, leaf = path.rsplit(".", 1)
        names = _checkpoint_names(model, leaf)
        expected = 3 if isinstance(module, QKVParallelLinear) else \
            len(module.out_features) if isinstance(module, MergedColumnParallelLinear) else 1
        if len(names) != expected or not set(names) & targets:
            continue          # a fused checkpoint matrix (Phi-3), or not a target
        wrapped = LoRALinear(module, names, context, max_loras, max_rank, dtype)
        for index, piece in enumerate(wrapped.pieces):      # pieces not targeted stay empty
            if piece.name not in targets:
                piece.name = f"{piece.name} (not a target)"
        setattr(model.get_submodule(parent_path), leaf, wrapped)
        layers[path] = wrapped
    return context, layers
