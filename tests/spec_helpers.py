"""What the speculative-decoding tests share: draft checkpoints and in-process engines."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from container.config.options_speculative import parse_speculative_config
from container.engine.block_manager import BlockManager
from container.engine.llm_engine import LLMEngine
from container.engine.model_config import ModelConfig
from container.engine.model_runner import ModelRunner
from container.engine.parallel import TensorParallel
from container.engine.scheduler import Scheduler
from container.engine.speculative import Speculator
from container.engine.speculative.draft import DraftModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def truncated_draft(target: Path, directory: Path, layers: int = 1) -> Path:
    """The target's first `layers` layers with its embeddings and head: a draft that agrees
    with the target often, but not always (q differs from p)."""
    from transformers import AutoModelForCausalLM

    if (directory / "config.json").is_file():
        return directory
    model = AutoModelForCausalLM.from_pretrained(target, num_hidden_layers=layers,
                                                 dtype=torch.float32)
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(target / name, directory / name)
    return directory


def _runner(model_dir: Path, num_blocks: int, block_size: int, device: str,
            max_len: int, graphs_for: int) -> ModelRunner:
    config = ModelConfig.from_dir(model_dir)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    runner = ModelRunner(config, str(model_dir), max_len, dtype, torch.device(device),
                         TensorParallel(), block_size)
    runner.allocate_kv_cache(num_blocks)
    if graphs_for:
        runner.capture_graphs(graphs_for, max_len)
    return runner


def make_engine(model_dir: Path, spec: str | None = None, draft: Path | None = None,
                num_blocks: int = 40, block_size: int = 4, max_seqs: int = 8,
                budget: int = 24, device: str = "cpu", max_len: int = 512,
                graphs: bool = False) -> LLMEngine:
    """An engine (CPU fp32, or GPU bf16 with CUDA graphs for target and draft when `graphs`);
    spec: option.speculative_config's JSON (draft: the draft's folder)."""
    graphs_for = max_seqs if graphs else 0
    speculator = None
    if spec:
        config = parse_speculative_config(spec)
        proposer = DraftModel(_runner(draft, num_blocks, block_size, device, max_len,
                                      graphs_for), num_blocks, budget) \
            if config.method == "draft_model" else None
        speculator = Speculator(config, proposer)
    scheduler = Scheduler(BlockManager(num_blocks, block_size, True), max_seqs, budget)
    return LLMEngine(_runner(model_dir, num_blocks, block_size, device, max_len, graphs_for),
                     scheduler, ModelConfig.from_dir(model_dir).eos_token_ids, max_len,
                     speculator=speculator)


def run_all(engine: LLMEngine, requests: list[tuple[list[int], object]],
            arrivals_per_step: int = 2) -> list[dict]:
    """Feed (prompt, SamplingParams) pairs a few per step; each request's tokens, log-probs
    and top log-probs."""
    results = [{"tokens": [], "logprobs": [], "top": []} for _ in requests]
    pending = list(enumerate(requests))
    steps = 0
    while pending or engine.has_work():
        steps += 1
        assert steps < 20 * len(requests) + 1000, "the engine stopped making progress"
        for _ in range(arrivals_per_step):
            if pending:
                i, (prompt, sampling) = pending.pop(0)
                engine.add_request(str(i), prompt, sampling)
        for out in engine.step():
            result = results[int(out.request_id)]
            result["tokens"].extend(out.new_token_ids)
            result["logprobs"].extend(out.logprobs or [])
            result["top"].extend(out.top_logprobs or [])
    return results
