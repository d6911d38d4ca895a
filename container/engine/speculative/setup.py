"""Start-up of speculative decoding: load the draft model (rank 0 only) and check it fits the
target, each problem one StartupError line saying what to change."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ...config.options_speculative import SpeculativeConfig
from ...errors import StartupError
from ..model_config import ModelConfig, NotNativeArchitecture
from ..parallel import TensorParallel

log = logging.getLogger(__name__)


def draft_model_dir(spec: SpeculativeConfig, config) -> Path:
    """The draft checkpoint's local directory (fetched like option.model_id)."""
    from ...storage.resolve import resolve_model_dir

    options = {**config.options, "model_id": spec.model, "load_format": "auto"}
    options.pop("revision", None)
    if spec.revision:
        options["revision"] = spec.revision
    try:
        return resolve_model_dir(dataclasses.replace(config, options=options))
    except StartupError as exc:
        why = str(exc).replace("option.model_id=", "")
        raise StartupError(f"option.speculative_config draft model: {why}") from None


def load_draft_runner(spec: SpeculativeConfig, config, target: ModelConfig, max_len: int,
                      dtype: torch.dtype, device: torch.device, block_size: int):
    """The draft's ModelRunner (our model code, one rank, the target's dtype and block size)."""
    from ..model_runner import ModelRunner

    directory = draft_model_dir(spec, config)
    try:
        draft = ModelConfig.from_dir(directory)
    except NotNativeArchitecture as exc:
        raise StartupError(f"option.speculative_config draft model {spec.model}: "
                           f"{str(exc).split(';')[0]}; a draft must be an architecture the "
                           "native engine implements (Llama, Qwen, Mistral, Gemma, Phi-3, ...)")
    if draft.vocab_size != target.vocab_size:
        raise StartupError(
            f"option.speculative_config draft model {spec.model} has a vocabulary of "
            f"{draft.vocab_size} tokens but the model has {target.vocab_size}: a draft must "
            "share the target's tokenizer (use a smaller model of the same family)")
    try:
        runner = ModelRunner(draft, str(directory), max_len, dtype, device, TensorParallel(),
                             block_size)
    except ValueError as exc:
        raise StartupError(f"option.speculative_config draft model {spec.model}: {exc}") \
            from None
    log.info("speculative decoding: draft %s (%s, %d layers, hidden %d), k=%d", spec.model,
             draft.architecture, draft.num_layers, draft.hidden_size,
             spec.num_speculative_tokens)
    return runner


def build_speculator(spec: SpeculativeConfig, draft_runner, num_blocks: int,
                     token_budget: int, capture_graphs_for: int | None, max_len: int):
    """The engine's Speculator; the draft (if any) gets num_blocks KV blocks of its own.
    capture_graphs_for: GPU batch size to record the draft's one-token steps for (None: eager)."""
    from . import Speculator
    from .draft import DraftModel

    if spec.method == "ngram":
        log.info("speculative decoding: n-gram prompt lookup, k=%d, n from %d down to %d",
                 spec.num_speculative_tokens, spec.prompt_lookup_max, spec.prompt_lookup_min)
        return Speculator(spec)
    draft_runner.allocate_kv_cache(num_blocks)
    if capture_graphs_for:
        draft_runner.capture_graphs(capture_graphs_for, max_len)
    return Speculator(spec, DraftModel(draft_runner, num_blocks, token_budget))
