"""A PEFT LoRA adapter on disk: its config, checks against the served model, and this rank's
slices of its A and B matrices (read lazily with safetensors' get_slice).

Every refusal is one line naming what does not match, so a bad adapter never reaches a step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LoRAError

# checkpoint module names whose layers LoRALinear wraps
SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_UNSUPPORTED_FIELDS = {"use_dora": "DoRA", "modules_to_save": "modules_to_save",
                       "alpha_pattern": "alpha_pattern", "layers_to_transform":
                       "layers_to_transform", "trainable_token_indices": "trainable tokens"}


@dataclass
class AdapterConfig:
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: set[str]
    base_class: str | None

    def scaling(self, rank: int) -> float:
        """PEFT's: alpha / r, or alpha / sqrt(r) with rsLoRA (r of the module's own matrices,
        which rank_pattern may set per module)."""
        return self.alpha / (math.sqrt(rank) if self.use_rslora else rank)


def read_config(name: str, directory: Path) -> AdapterConfig:
    path = directory / "adapter_config.json"
    if not path.is_file():
        raise LoRAError(400, "InvalidAdapter",
                        f"adapter {name!r}: {directory} has no adapter_config.json (a PEFT "
                        "LoRA adapter folder is expected)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LoRAError(400, "InvalidAdapter",
                        f"adapter {name!r}: adapter_config.json is not JSON: {exc}") from None
    where = f"adapter {name!r}: adapter_config.json"
    if str(raw.get("peft_type", "LORA")).upper() != "LORA":
        raise LoRAError(400, "InvalidAdapter",
                        f"{where}: peft_type={raw.get('peft_type')} is not LORA")
    for field, what in _UNSUPPORTED_FIELDS.items():
        if raw.get(field):
            raise LoRAError(400, "InvalidAdapter", f"{where}: {what} ({field}) is not supported")
    if str(raw.get("bias", "none")) != "none" or raw.get("lora_bias"):
        raise LoRAError(400, "InvalidAdapter", f"{where}: bias={raw.get('bias')!r}: only "
                        "bias='none' is supported")
    if raw.get("fan_in_fan_out"):
        raise LoRAError(400, "InvalidAdapter", f"{where}: fan_in_fan_out=true is not supported")
    try:
        rank, alpha = int(raw["r"]), float(raw.get("lora_alpha", raw["r"]))
    except (KeyError, TypeError, ValueError):
        raise LoRAError(400, "InvalidAdapter", f"{where}: needs an integer r") from None
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):     # "all-linear", or a regex over module paths
        targets = list(SUPPORTED_MODULES) if targets == "all-linear" else [
            m for m in SUPPORTED_MODULES if m in targets]
    base = (raw.get("auto_mapping") or {}).get("base_model_class")
    return AdapterConfig(rank, alpha, bool(raw.get("use_rslora")), set(targets), base)


def adapter_weights_file(name: str, directory: Path) -> Path:
    path = directory / "adapter_model.safetensors"
    if not path.is_file():
        extra = " (adapter_model.bin is not read: save with safe_serialization=True)" \
            if (directory / "adapter_model.bin").is_file() else ""
        raise LoRAError(400, "InvalidAdapter",
                        f"adapter {name!r}: {directory} has no adapter_model.safetensors{extra}")
    return path


def _module_of(key: str) -> tuple[str, str] | None:
    """PEFT key -> (checkpoint module path, 'A' | 'B'); None for what is not a LoRA matrix."""
    for marker, which in ((".lora_A.", "A"), (".lora_B.", "B")):
        if marker in key:
            module = key.split(marker)[0]
            for prefix in ("base_model.model.", "base_model."):
                if module.startswith(prefix):
                    module = module[len(prefix):]
                    break
            return module, which
    return None


HostWeights = dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]   # layer -> piece -> A, B


def load_adapter(name: str, directory: Path, model, layers: dict, max_rank: int,
                 dtype: torch.dtype, architecture: str | None = None) -> HostWeights:
    """This rank's A and B (scaling folded into B) for every LoRA layer the adapter targets."""
    from safetensors import safe_open

    config = read_config(name, directory)
    if architecture and config.base_class and config.base_class != architecture:
        raise LoRAError(400, "AdapterMismatch",
                        f"adapter {name!r}: made for {config.base_class}, but this model is "
                        f"{architecture}")
    enabled = {piece.name for layer in layers.values() for piece in layer.pieces
               if " " not in piece.name}          # attach.py marks pieces that are no target
    for module in sorted(config.target_modules):
        if module not in SUPPORTED_MODULES:
            raise LoRAError(400, "AdapterMismatch",
                            f"adapter {name!r}: target module {module!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_MODULES)})")
        if module not in enabled:
            raise LoRAError(400, "AdapterMismatch",
                            f"adapter {name!r}: target module {module!r} is not in "
                            f"option.lora_target_modules ({', '.join(sorted(enabled))})")
    matrices: dict[str, dict[str, str]] = {}
    with safe_open(str(adapter_weights_file(name, directory)), framework="pt") as f:
        for key in f.keys():
            found = _module_of(key)
            if found is None:
                if "lora_embedding" in key or "lora_magnitude" in key:
                    raise LoRAError(400, "AdapterMismatch",
                                    f"adapter {name!r}: tensor {key} is not supported "
                                    "(LoRA on linear projections only)")
                continue
            module, which = found
            matrices.setdefault(module, {})[which] = key
        out: HostWeights = {}
        for module, pair in sorted(matrices.items()):
            if set(pair) != {"A", "B"}:
                raise LoRAError(400, "InvalidAdapter",
                                f"adapter {name!r}: {module} has lora_{''.join(pair)} only")
            layer_path, layer, piece = _target(name, module, model, layers)
            a_slice, b_slice = f.get_slice(pair["A"]), f.get_slice(pair["B"])
            a_shape, b_shape = tuple(a_slice.get_shape()), tuple(b_slice.get_shape())
            p = layer.pieces[piece]
            rank = a_shape[0]
            expected_a, expected_b = (rank, layer.in_full), (p.full_out, rank)
            if len(a_shape) != 2 or a_shape != expected_a or b_shape != expected_b:
                raise LoRAError(400, "AdapterMismatch",
                                f"adapter {name!r}: {module} has A {list(a_shape)} and B "
                                f"{list(b_shape)}, the model needs A [r, {layer.in_full}] and "
                                f"B [{p.full_out}, r] (is it for another base model?)")
            if rank > max_rank:
                raise LoRAError(400, "AdapterMismatch",
                                f"adapter {name!r}: {module} has rank {rank}, over "
                                f"option.max_lora_rank={max_rank}")
            a, b = layer.local_slices(piece, a_slice, b_slice)
            scale = config.scaling(rank)
            out.setdefault(layer_path, {})[piece] = (
                a.to(dtype).contiguous(), (b.float() * scale).to(dtype).contiguous())
    if not out:
        raise LoRAError(400, "InvalidAdapter", f"adapter {name!r}: no LoRA matrices in "
                        "adapter_model.safetensors")
    return out


def _target(name: str, module: str, model, layers: dict):
    """(our layer path, the LoRALinear, piece index) of a checkpoint module path."""
    mapped = model.map_checkpoint_name(module + ".weight")
    ours = mapped[0][:-len(".weight")] if mapped else None
    layer = layers.get(ours)
    piece = layer.piece_index(module.rsplit(".", 1)[-1]) if layer is not None else None
    if piece is None:
        raise LoRAError(400, "AdapterMismatch",
                        f"adapter {name!r}: module {module} is not a LoRA target of this model "
                        "(another architecture, more layers, or a module not enabled?)")
    return ours, layer, piece
