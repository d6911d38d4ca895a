"""LoRA options of the native engine (option.enable_lora and friends), checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from . import values
from .engine_options import OptionError, option

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _modules(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in (("all-linear",), ("all",)):
        return LORA_MODULES
    unknown = [n for n in names if n not in LORA_MODULES]
    if unknown or not names:
        raise ValueError(f"{', '.join(unknown) or 'nothing'} not supported; allowed: a comma "
                         f"list of {', '.join(LORA_MODULES)} (or all-linear)")
    return names


def _adapter_list(text: str) -> tuple[tuple[str, str], ...]:
    """name=src entries, comma separated; a bare src is named after its last path part."""
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, _, src = item.partition("=") if "=" in item.split("/")[0] else ("", "", item)
        src = src.strip()
        name = name.strip() or src.rstrip("/").rsplit("/", 1)[-1]
        if not name or not src:
            raise ValueError("allowed: a comma list of name=src (src: a folder, s3://bucket/"
                             "prefix/ or a Hub id)")
        out.append((name, src))
    return tuple(out)


@dataclass
class LoRAOptions:
    enable_lora: bool = option(
        "enable_lora", "false", "Serve LoRA adapters on top of the base model (native engine).",
        values.boolean)
    max_loras: int = option(
        "max_loras", "4", "LoRA: adapters resident on the device at once (each step may mix "
        "them all with the base model).", values.integer(1, 256))
    max_lora_rank: int = option(
        "max_lora_rank", "16", "LoRA: the highest adapter rank accepted (device slots are "
        "sized for it).", values.integer(1, 512))
    max_cpu_loras: int | None = option(
        "max_cpu_loras", None, "LoRA: adapters kept in host memory, least recently used "
        "evicted (re-read from their folder when needed); unset: max(max_loras, 8).",
        values.integer(1))
    lora_dtype: str = option(
        "lora_dtype", "auto", "LoRA: dtype of the adapter matrices (auto: the model's).",
        values.choice("auto", "fp16", "bf16", "fp32"))
    lora_target_modules: tuple[str, ...] = option(
        "lora_target_modules", ",".join(LORA_MODULES),
        "LoRA: the projections that may carry adapters (comma list; fewer saves memory).",
        _modules)
    adapters: tuple[tuple[str, str], ...] = option(
        "adapters", "", "LoRA: adapters registered at start, name=src comma list (src: a "
        "folder, s3:// prefix or Hub id); folders under the model dir's adapters/ are "
        "registered too.", _adapter_list)

    def check_lora(self) -> None:
        if self.max_cpu_loras is None:
            self.max_cpu_loras = max(self.max_loras, 8)
        if self.max_cpu_loras < self.max_loras:
            raise OptionError("max_cpu_loras", str(self.max_cpu_loras),
                              f"must be at least option.max_loras={self.max_loras}")
        if self.adapters and not self.enable_lora:
            raise OptionError("adapters", ",".join(f"{n}={s}" for n, s in self.adapters),
                              "needs option.enable_lora=true")
