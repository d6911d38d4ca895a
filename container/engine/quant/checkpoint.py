"""What a checkpoint says about its own quantization: config.json's `quantization_config`
(or ModelOpt's hf_quant_config.json), read into a Fp8Checkpoint or refused with one line.

Layouts read (as vLLM reads them):
- compressed-tensors (llm-compressor): `quant_method: compressed-tensors`, one or more
  `config_groups` whose `weights` are `type: float, num_bits: 8` with `strategy: channel`
  (weight_scale [N, 1]) or `tensor` (one value); `input_activations` dynamic per token, or
  static per tensor (an `input_scale` tensor); `ignore` lists modules kept unquantized.
- ModelOpt (NVIDIA TensorRT Model Optimizer): `quant_method: modelopt` with `quant_algo: FP8`
  in config.json, or hf_quant_config.json's `quantization.quant_algo: FP8`; per-tensor
  `weight_scale` and `input_scale`; `exclude_modules` kept unquantized.
- `quant_method: fp8` (per-tensor scales, as vLLM's own FP8 checkpoints), without blocks.

Activations are always scaled per token at run time here: a static `input_scale` is read
past (dynamic per-token scales are at least as accurate). Checkpoint `k_scale` / `v_scale`
are read past too: the FP8 KV cache uses a scale of 1.0 (quant/kv_cache.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import StartupError

SUPPORTED = "compressed-tensors (FP8 weights per channel or per tensor), modelopt (FP8), fp8"
# tensors of FP8 checkpoints that have no place in our model
SKIPPED_SUFFIXES = (".input_scale", ".k_scale", ".v_scale", ".kv_scale", ".output_scale",
                    ".weight_zero_point", ".input_zero_point")


@dataclass
class Fp8Checkpoint:
    method: str                      # compressed-tensors | modelopt | fp8
    weight_strategy: str             # channel | tensor
    activations: str                 # dynamic | static (static scales are read past)
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.method} checkpoint: FP8 weights per {self.weight_strategy}, its "
                f"activation scheme {self.activations}")


def skip_tensor(name: str) -> bool:
    return name.endswith(SKIPPED_SUFFIXES)


def _refuse(method: str, why: str) -> StartupError:
    return StartupError(f"checkpoint quantization {method!r} is not supported by the native "
                        f"engine ({why}); supported: {SUPPORTED}, or an unquantized checkpoint "
                        "with option.quantize=fp8")


def read_quantization(model_dir: str | Path) -> Fp8Checkpoint | None:
    """The checkpoint's FP8 layout; None when it is not quantized; StartupError otherwise."""
    model_dir = Path(model_dir)
    raw = _json(model_dir / "config.json") or {}
    config = raw.get("quantization_config") or (raw.get("text_config") or {}).get(
        "quantization_config")
    modelopt = _json(model_dir / "hf_quant_config.json")
    if not config and modelopt:
        config = {"quant_method": "modelopt", **(modelopt.get("quantization") or {})}
    if not config:
        return None
    method = str(config.get("quant_method") or config.get("quant_algo") or "?").lower()
    if method == "compressed-tensors":
        return _compressed_tensors(config)
    if method == "modelopt":
        return _modelopt(config)
    if method == "fp8":
        if config.get("weight_block_size"):
            raise _refuse(method, f"block-wise scales {config['weight_block_size']}")
        return Fp8Checkpoint("fp8", "tensor", str(config.get("activation_scheme", "dynamic")),
                             list(config.get("ignored_layers") or config.get("modules_to_not_"
                                                                                "convert") or []))
    raise _refuse(method, "not an FP8 layout")


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StartupError(f"{path} is not valid JSON: {exc}")


def _compressed_tensors(config: dict) -> Fp8Checkpoint:
    method = "compressed-tensors"
    groups = config.get("config_groups") or {}
    if not groups:
        raise _refuse(method, "no config_groups")
    if config.get("format") not in (None, "float-quantized", "naive-quantized"):
        raise _refuse(method, f"format {config.get('format')}")
    strategies, activations = set(), set()
    for name, group in groups.items():
        weights = group.get("weights") or {}
        if weights.get("type") != "float" or int(weights.get("num_bits", 0)) != 8:
            raise _refuse(method, f"group {name}: weights of {weights.get('num_bits')} bits, "
                                  f"type {weights.get('type')}")
        strategy = weights.get("strategy")
        if strategy not in ("channel", "tensor") or weights.get("dynamic"):
            raise _refuse(method, f"group {name}: weight strategy {strategy}")
        strategies.add(strategy)
        inputs = group.get("input_activations")
        if inputs:
            if inputs.get("type") != "float" or int(inputs.get("num_bits", 0)) != 8:
                raise _refuse(method, f"group {name}: activations of {inputs.get('num_bits')} "
                                      f"bits, type {inputs.get('type')}")
            activations.add("dynamic" if inputs.get("dynamic") else "static")
        else:
            activations.add("none")
    return Fp8Checkpoint(method, "channel" if strategies == {"channel"} else "tensor",
                         "/".join(sorted(activations)), list(config.get("ignore") or []))


def _modelopt(config: dict) -> Fp8Checkpoint:
    algo = str(config.get("quant_algo") or "").upper()
    if algo != "FP8":
        raise _refuse("modelopt", f"quant_algo {algo or 'missing'}")
    return Fp8Checkpoint("modelopt", "tensor", "static",
                         list(config.get("exclude_modules") or []))
