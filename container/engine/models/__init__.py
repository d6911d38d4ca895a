"""One module per model family; ModelConfig.module names the one an architecture uses."""

from __future__ import annotations

import importlib

from ..model_config import ModelConfig


def model_class(config: ModelConfig):
    """The family's CausalLM class for config.architecture (e.g. models/qwen3.py)."""
    module = importlib.import_module(f"{__name__}.{config.module}")
    return getattr(module, config.architecture, None) or module.CausalLM
