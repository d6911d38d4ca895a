"""Load a checkpoint with transformers and hand it to `deepspeed.init_inference`.

deepspeed is an optional extra: without it engine=DeepSpeed stops at start with one line saying
how to install it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..errors import StartupError
from .deepspeed_config import InferenceSetup

log = logging.getLogger(__name__)

INSTALL_HINT = ("engine=DeepSpeed needs the deepspeed package, which is not installed: "
                "pip install 'serve-container[deepspeed]' (on a machine without CUDA: "
                "DS_BUILD_OPS=0 pip install deepspeed)")


def import_deepspeed():
    try:
        import deepspeed
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "deepspeed":
            raise StartupError(INSTALL_HINT) from None
        raise StartupError(f"deepspeed is installed but cannot be imported: it needs the module "
                           f"{exc.name!r}: pip install {exc.name}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install: say so in one line
        raise StartupError(f"deepspeed is installed but cannot be imported: "
                           f"{type(exc).__name__}: {exc}") from None
    return deepspeed


@contextlib.contextmanager
def _parameters_on_meta():
    """Build a model with parameters on the meta device but real buffers.

    option.checkpoint has DeepSpeed load the weights; buffers computed at construction (rotary
    inv_freq) are in no checkpoint, so they must be real. (torch.device("meta") would leave them
    uninitialized, and DeepSpeed's OnDevice fails with transformers 5.)
    """
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"),
                                                          requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def load_model(model_dir: Path, setup: InferenceSetup, trust_remote_code: bool):
    """The transformers model with DeepSpeed applied (every rank holds its shard)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    deepspeed = import_deepspeed()
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        if setup.checkpoint_json is not None:
            with _parameters_on_meta():
                model = AutoModelForCausalLM.from_config(config, dtype=setup.load_dtype,
                                                         trust_remote_code=trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=setup.load_dtype,
                                                         trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise StartupError(f"transformers cannot load {model_dir} as a causal language model: "
                           f"{' '.join(str(exc).split())[:300]}") from None
    model.eval()
    args = dict(setup.init_args)
    if setup.checkpoint_json is not None and setup.tp_size == 1 and not setup.kernel_injection:
        # DeepSpeed reads option.checkpoint only while it splits or injects the model; with one
        # rank and AutoTP it would silently serve uninitialized weights, so load it here.
        _load_state_dicts(model, setup.checkpoint_json, Path(args.get("base_dir") or model_dir))
        args.pop("checkpoint")
    if setup.kernel_injection:
        _arch_list_for_deepspeed()
    engine = deepspeed.init_inference(model, config=args)
    return engine.module


def _arch_list_for_deepspeed() -> None:
    """DeepSpeed JIT-builds its inference kernels for TORCH_CUDA_ARCH_LIST, and its parser
    fails on architecture-specific entries such as Hopper's '9.0a' (int('0a')). The plain
    '9.0' builds the same kernels: DeepSpeed's have no 'a'-only instructions."""
    import os
    import re

    value = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if value and re.search(r"\d[a-z]", value):
        plain = re.sub(r"(\d+\.\d+)[a-z]+", r"\1", value)
        log.info("TORCH_CUDA_ARCH_LIST %r -> %r for DeepSpeed's kernel build", value, plain)
        os.environ["TORCH_CUDA_ARCH_LIST"] = plain


def _load_state_dicts(model, description_path: Path, base_dir: Path) -> None:
    import json

    description = json.loads(description_path.read_text(encoding="utf-8"))
    base_dir = Path(description.get("base_dir") or base_dir)
    for name in description["checkpoints"]:
        try:
            state = torch.load(base_dir / name, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise StartupError(f"option.checkpoint: cannot load {base_dir / name}: "
                               f"{' '.join(str(exc).split())[:200]}") from None
        model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise StartupError(f"option.checkpoint={description_path} has no weights for "
                           f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
