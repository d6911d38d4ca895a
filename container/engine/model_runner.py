"""Turns a scheduled step into tensors, runs the model on this rank's shard, returns logits.

Rank 0 packs each step into a StepPlan: a flat int64 array (token ids, positions, KV slots,
query offsets, sequence lengths, block tables, which rows produce logits). That array is all
the other ranks receive, so a step costs them one small broadcast, never a pickle of requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .layers.attention import AttentionMetadata
from .model_config import ModelConfig
from .models.llama import LlamaForCausalLM
from .parallel import TensorParallel
from .scheduler import ScheduledSeq
from .weights import load_weights

log = logging.getLogger(__name__)

_HEADER = 5   # num_tokens, num_seqs, max_blocks, num_logits, num_decode


@dataclass
class StepPlan:
    data: np.ndarray                  # int64, see build()

    @classmethod
    def build(cls, scheduled: list[ScheduledSeq], block_size: int) -> "StepPlan":
        lens = [s.num_new_tokens for s in scheduled]
        num_tokens, num_seqs = sum(lens), len(scheduled)
        max_blocks = max(len(s.seq.block_ids) for s in scheduled)
        input_ids = np.empty(num_tokens, np.int64)
        positions = np.empty(num_tokens, np.int64)
        slots = np.empty(num_tokens, np.int64)
        query_start = np.zeros(num_seqs + 1, np.int64)
        seq_lens = np.empty(num_seqs, np.int64)
        tables = np.zeros((num_seqs, max_blocks), np.int64)
        logits_rows = []
        num_decode = 0
        cursor = 0
        for i, item in enumerate(scheduled):
            seq, n = item.seq, item.num_new_tokens
            start = seq.num_computed_tokens
            blocks = np.asarray(seq.block_ids, np.int64)
            pos = np.arange(start, start + n, dtype=np.int64)
            input_ids[cursor:cursor + n] = seq.token_ids[start:start + n]
            positions[cursor:cursor + n] = pos
            slots[cursor:cursor + n] = blocks[pos // block_size] * block_size + pos % block_size
            cursor += n
            query_start[i + 1] = cursor
            seq_lens[i] = start + n
            tables[i, :len(blocks)] = blocks
            if item.samples:
                logits_rows.append(cursor - 1)
            if n == 1 and num_decode == i:
                num_decode += 1
        header = np.array([num_tokens, num_seqs, max_blocks, len(logits_rows), num_decode],
                          np.int64)
        return cls(np.concatenate([header, input_ids, positions, slots, query_start, seq_lens,
                                   tables.ravel(), np.asarray(logits_rows, np.int64)]))

    def unpack(self) -> dict[str, np.ndarray | int]:
        d = self.data
        num_tokens, num_seqs, max_blocks, num_logits, num_decode = (int(x) for x in d[:_HEADER])
        out, cursor = {}, _HEADER
        for name, size in (("input_ids", num_tokens), ("positions", num_tokens),
                           ("slots", num_tokens), ("query_start", num_seqs + 1),
                           ("seq_lens", num_seqs), ("tables", num_seqs * max_blocks),
                           ("logits_rows", num_logits)):
            out[name] = d[cursor:cursor + size]
            cursor += size
        out["tables"] = out["tables"].reshape(num_seqs, max_blocks)
        out["num_decode"] = num_decode
        return out


def resolve_dtype(option: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if option != "auto":
        return named[option]
    if device.type == "cpu":
        return torch.float32           # CPU matmuls are fastest and exact in fp32
    by_name = {"float32": torch.bfloat16, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return by_name.get(str(checkpoint_dtype), torch.bfloat16)


class ModelRunner:
    def __init__(self, model_config: ModelConfig, weights, max_model_len: int,
                 dtype: torch.dtype, device: torch.device, tp: TensorParallel, block_size: int):
        """weights: a checkpoint directory or a CheckpointSource (engine/weights.py)."""
        self.config = model_config
        self.device = device
        self.dtype = dtype
        self.tp = tp
        self.block_size = block_size
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                self.model = LlamaForCausalLM(model_config, max_model_len, tp)
        finally:
            torch.set_default_dtype(torch.float32)
        load_weights(self.model, weights)
        self.model.eval()
        self.kv_caches: list[torch.Tensor] = []

    @property
    def local_kv_heads(self) -> int:
        return self.model.attention_layers[0].num_kv_heads

    def kv_bytes_per_block(self) -> int:
        element = torch.tensor([], dtype=self.dtype).element_size()
        return (2 * self.config.num_layers * self.block_size * self.local_kv_heads
                * self.config.head_dim * element)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        shape = (2, num_blocks, self.block_size, self.local_kv_heads, self.config.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                          for _ in range(self.config.num_layers)]

    def _tensors(self, plan: StepPlan):
        parts = plan.unpack()
        dev = self.device

        def t(name, dtype=torch.int64):
            return torch.from_numpy(np.ascontiguousarray(parts[name])).to(dev, dtype, non_blocking=True)

        seq_lens = parts["seq_lens"]
        query_start = parts["query_start"]
        meta = AttentionMetadata(
            slot_mapping=t("slots"),
            query_start_loc=t("query_start", torch.int32),
            seq_lens=t("seq_lens", torch.int32),
            block_tables=t("tables", torch.int32),
            max_query_len=int(np.diff(query_start).max()) if len(seq_lens) else 0,
            max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
            query_start_host=query_start.tolist(),
            seq_lens_host=seq_lens.tolist(),
            num_decode=parts["num_decode"],
        )
        return t("input_ids"), t("positions"), meta, t("logits_rows")

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> torch.Tensor:
        """Run one step on this rank's shard; logits [num_logits, vocab] (every rank)."""
        input_ids, positions, meta, logits_rows = self._tensors(plan)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        return self.model.compute_logits(hidden[logits_rows])
