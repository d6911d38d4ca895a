"""Turns a scheduled step into tensors, runs the model on this rank's shard, returns logits.

Rank 0 packs each step into a StepPlan: a flat int64 array (token ids, positions, KV slots,
query offsets, sequence lengths, block tables, which rows produce logits). That array is all
the other ranks receive, so a step costs them one small broadcast, never a pickle of requests.
Speculative decoding needs nothing more: a sequence's draft tokens are rows after its newest
token, each with a logit row, so verification is an ordinary (eager) step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .layers.attention import AttentionMetadata
from .model_config import ModelConfig
from .models import model_class
from .parallel import TensorParallel
from .scheduler import ScheduledSeq
from .quant.plan import load_with_plan

log = logging.getLogger(__name__)

_HEADER = 5   # num_tokens, num_seqs, max_blocks, num_logits, num_decode
PLACEHOLDER = -1


@dataclass
class StepPlan:
    data: np.ndarray                  # int64, see build()

    @classmethod
    def build(cls, scheduled: list[ScheduledSeq], block_size: int,
              previous_rows: dict[int, int] | None = None,
              prompt_rows: list[int] | None = None, lora: bool = False) -> "StepPlan":
        """previous_rows: id(sequence) -> row of the previous step's sampled tokens, for
        sequences whose newest token is still a placeholder (overlapped steps).
        prompt_rows: token rows whose logits are wanted besides the sampled ones (prompt
        log-probs); they trail the plan, after from_previous.
        lora: the engine serves LoRA adapters: each sequence's device slot (-1: the base
        model) ends the plan, one per sequence."""
        plan = cls._build(scheduled, block_size, previous_rows)
        tail = list(prompt_rows or []) + ([s.seq.lora_slot for s in scheduled] if lora else [])
        if tail:
            plan.data = np.concatenate([plan.data, np.asarray(tail, np.int64)])
        return plan

    @classmethod
    def _build(cls, scheduled: list[ScheduledSeq], block_size: int,
               previous_rows: dict[int, int] | None) -> "StepPlan":
        lens = [s.num_new_tokens for s in scheduled]
        num_tokens, num_seqs = sum(lens), len(scheduled)
        seqs = [s.seq for s in scheduled]
        # rounded up so the kernels' block-table stride keeps one specialisation
        max_blocks = -(-max(len(seq.block_ids) for seq in seqs) // 16) * 16
        tables = np.zeros((num_seqs, max_blocks), np.int64)
        for i, seq in enumerate(seqs):
            tables[i, :len(seq.block_ids)] = seq.block_ids
        if num_tokens == num_seqs:               # one token each (decodes): no per-row arrays
            positions = [seq.num_computed_tokens for seq in seqs]
            input_ids = [seq.token_ids[p] for seq, p in zip(seqs, positions)]
            slots = [seq.block_ids[p // block_size] * block_size + p % block_size
                     for seq, p in zip(seqs, positions)]
            query_start = list(range(num_seqs + 1))
            seq_lens = [p + 1 for p in positions]
            logits_rows = [i for i, item in enumerate(scheduled) if item.samples]
            from_previous = [previous_rows[id(seq)] if token == PLACEHOLDER else -1
                             for seq, token in zip(seqs, input_ids)] if previous_rows else \
                [-1] * num_tokens
            header = [num_tokens, num_seqs, max_blocks, len(logits_rows), num_seqs]
            return cls(np.concatenate([
                np.array(header + input_ids + positions + slots + query_start + seq_lens,
                         np.int64), tables.ravel(), np.array(logits_rows + from_previous,
                                                             np.int64)]))
        input_ids = np.empty(num_tokens, np.int64)
        positions = np.empty(num_tokens, np.int64)
        slots = np.empty(num_tokens, np.int64)
        query_start = np.zeros(num_seqs + 1, np.int64)
        seq_lens = np.empty(num_seqs, np.int64)
        logits_rows = []
        num_decode = 0
        cursor = 0
        for i, item in enumerate(scheduled):
            seq, n = item.seq, item.num_new_tokens
            start = seq.num_computed_tokens
            pos = np.arange(start, start + n, dtype=np.int64)
            drafts = item.num_draft              # speculative: verified after the last token
            input_ids[cursor:cursor + n - drafts] = seq.token_ids[start:start + n - drafts]
            if drafts:
                input_ids[cursor + n - drafts:cursor + n] = seq.draft_tokens[:drafts]
            positions[cursor:cursor + n] = pos
            slots[cursor:cursor + n] = tables[i, pos // block_size] * block_size + pos % block_size
            cursor += n
            query_start[i + 1] = cursor
            seq_lens[i] = start + n
            if item.samples:                     # the last token's row, then each draft's
                logits_rows.extend(range(cursor - 1 - drafts, cursor))
            if n == 1 and num_decode == i:
                num_decode += 1
        from_previous = np.full(num_tokens, -1, np.int64)
        if previous_rows:
            for row in np.nonzero(input_ids == PLACEHOLDER)[0]:
                seq = seqs[int(np.searchsorted(query_start, row, side="right")) - 1]
                from_previous[row] = previous_rows[id(seq)]
        header = np.array([num_tokens, num_seqs, max_blocks, len(logits_rows), num_decode],
                          np.int64)
        return cls(np.concatenate([header, input_ids, positions, slots, query_start, seq_lens,
                                   tables.ravel(), np.asarray(logits_rows, np.int64),
                                   from_previous]))

    def layout(self, lora: bool = False) -> dict[str, tuple[int, int]]:
        """name -> (start, size) of each array inside `data`, plus the header counts.
        lora: the plan ends with each sequence's LoRA slot (see build)."""
        num_tokens, num_seqs, max_blocks, num_logits, num_decode = (int(x) for x in self.data[:_HEADER])
        out, cursor = {}, _HEADER
        for name, size in (("input_ids", num_tokens), ("positions", num_tokens),
                           ("slots", num_tokens), ("query_start", num_seqs + 1),
                           ("seq_lens", num_seqs), ("tables", num_seqs * max_blocks),
                           ("logits_rows", num_logits), ("from_previous", num_tokens)):
            out[name] = (cursor, size)
            cursor += size
        lora_rows = num_seqs if lora else 0
        out["prompt_rows"] = (cursor, len(self.data) - cursor - lora_rows)
        out["lora_slots"] = (len(self.data) - lora_rows, lora_rows)
        out["shape"] = (num_seqs, max_blocks)
        out["num_decode"] = (num_decode, 0)
        return out

    def unpack(self) -> dict[str, np.ndarray | int]:
        layout = self.layout()
        out = {name: self.data[start:start + size] for name, (start, size) in layout.items()
               if name not in ("shape", "num_decode")}
        out["tables"] = out["tables"].reshape(layout["shape"])
        out["num_decode"] = layout["num_decode"][0]
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
                 dtype: torch.dtype, device: torch.device, tp: TensorParallel, block_size: int,
                 model: torch.nn.Module | None = None, lora=None, quant=None):
        """weights: a checkpoint directory or a CheckpointSource (engine/weights.py).
        model: one already built and loaded (the transformers path), instead of ours.
        lora: LoRAOptions when adapters are served (lora/runtime.py wraps the layers).
        quant: quant/plan.py's QuantPlan (FP8 weights, the KV cache's type); None: neither."""
        self.config = model_config
        self.device = device
        self.dtype = dtype
        self.tp = tp
        self.block_size = block_size
        self.kv_dtype = quant.kv_dtype(dtype) if quant is not None else dtype
        if model is None:
            torch.set_default_dtype(dtype)
            try:
                with torch.device(device):
                    model = model_class(model_config)(model_config, max_model_len, tp)
            finally:
                torch.set_default_dtype(torch.float32)
            load_with_plan(model, weights, quant, tp, dtype)
            if device.type == "cpu":
                from .layers.cpu_packing import pack_cpu_weights
                from .layers.embedding import ParallelLMHead
                from .layers.linear import LinearBase

                pack_cpu_weights(model, (LinearBase, ParallelLMHead))
        self.model = model.eval()
        self.lora = None
        if lora is not None:
            from .lora.runtime import LoRARuntime

            self.lora = LoRARuntime(self.model, model_config, lora, dtype)
        self.kv_caches: list[torch.Tensor] = []
        self.graphs = None                     # cuda_graphs.DecodeGraphs once captured
        self.greedy_tokens: torch.Tensor | None = None   # see execute()
        self.prompt_logits: torch.Tensor | None = None
        self.sm_count = (torch.cuda.get_device_properties(device).multi_processor_count
                         if device.type == "cuda" else 1)
        from .kernels.workspace import DecodeWorkspace

        self.decode_workspace = DecodeWorkspace()
        self._pinned_ring: list[torch.Tensor | None] = [None] * 3   # see _upload
        self._pinned_events: list = [None] * 3
        self._pinned_next = -1

    @property
    def local_kv_heads(self) -> int:
        return self.model.attention_layers[0].num_kv_heads

    def kv_bytes_per_block(self) -> int:
        element = torch.tensor([], dtype=self.kv_dtype).element_size()   # FP8 cache: 1
        return (2 * len(self.model.attention_layers) * self.block_size * self.local_kv_heads
                * self.config.head_dim * element)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """num_blocks usable blocks plus one scratch block that padded graph rows write to."""
        self.scratch_slot = num_blocks * self.block_size
        shape = (2, num_blocks + 1, self.block_size, self.local_kv_heads, self.config.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
                          for _ in self.model.attention_layers]   # this stage's

    def capture_graphs(self, max_batch: int, max_model_len: int) -> None:
        """GPU: record decode steps as CUDA graphs (one per batch-size bucket)."""
        from .cuda_graphs import DecodeGraphs, bucket_sizes

        reducer = self.tp.small_all_reduce
        if reducer is not None and reducer.enabled:
            for size in bucket_sizes(max_batch):      # register before capture (collective)
                reducer.register((size, self.config.hidden_size), self.dtype, self.device)
            if os.environ.get("SERVE_FUSED_ALLREDUCE_NORM", "1") != "0":
                fused = reducer.prepare_norm_fusion(self.config.hidden_size, self.dtype,
                                                    self.device, self.config.rms_norm_eps)
                log.info("all-reduce + add + norm: %s", "one fused kernel" if fused
                         else "separate kernels")
        self.graphs = DecodeGraphs(self, max_batch, -(-max_model_len // self.block_size))
        self.graphs.capture()

    def prepare(self, plan: StepPlan) -> "PreparedStep":
        """Device tensors for a step: the plan goes over in one copy and is sliced there."""
        layout = plan.layout(lora=self.lora is not None)
        host = torch.from_numpy(plan.data)
        data = self._upload(host) if self.device.type == "cuda" else host

        def view(name):
            start, size = layout[name]
            return data[start:start + size]

        num_seqs, max_blocks = layout["shape"]
        num_decode = layout["num_decode"][0]
        start, size = layout["query_start"]
        query_start = plan.data[start:start + size]
        start, size = layout["seq_lens"]
        seq_lens = plan.data[start:start + size]
        max_query_len = int(np.diff(query_start).max()) if num_seqs else 0
        decode_only = num_decode == num_seqs and max_query_len == 1
        max_seq_len = int(seq_lens.max()) if num_seqs else 0
        meta = AttentionMetadata(
            slot_mapping=view("slots"), query_start_loc=view("query_start"),
            seq_lens=view("seq_lens"), block_tables=view("tables").view(num_seqs, max_blocks),
            max_query_len=max_query_len, max_seq_len=max_seq_len,
            query_start_host=query_start.tolist(), seq_lens_host=seq_lens.tolist(),
            num_decode=num_decode, decode_only=decode_only,
            decode_splits=self.decode_splits(num_seqs, max_seq_len),
            workspace=self.decode_workspace)
        if self.lora is not None:       # each token row's adapter slot, for every LoRA layer
            start, size = layout["lora_slots"]
            self.lora.begin_step(plan.data[start:start + size], np.diff(query_start), self.device)
        return PreparedStep(view("input_ids"), view("positions"), meta, view("logits_rows"),
                            num_seqs, max_blocks, view("from_previous"), view("prompt_rows"))

    def _upload(self, host: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """Copy the plan to the GPU without blocking the CPU: from pageable memory the copy
        would wait for the step in flight to finish, serialising CPU and GPU again. A ring of
        pinned buffers keeps each one untouched until its copy has run. `into`: a device
        buffer to copy into (its first host.numel() elements) instead of a new tensor."""
        slot = self._pinned_next = (self._pinned_next + 1) % len(self._pinned_ring)
        ring, events = self._pinned_ring, self._pinned_events
        if events[slot] is not None:
            events[slot].synchronize()
        if ring[slot] is None or ring[slot].numel() < host.numel():
            ring[slot] = torch.empty(max(host.numel(), 1 << 16), dtype=host.dtype,
                                     pin_memory=True)
        staged = ring[slot][:host.numel()]
        staged.copy_(host)
        if into is None:
            data = staged.to(self.device, non_blocking=True)
        else:
            data = into[:host.numel()]
            data.copy_(staged, non_blocking=True)
        events[slot] = torch.cuda.Event()
        events[slot].record()
        return data

    def upload_into(self, data: np.ndarray, buffer: torch.Tensor) -> None:
        self._upload(torch.from_numpy(data), into=buffer)

    def decode_splits(self, batch: int, max_seq_len: int) -> int:
        from .kernels.workspace import decode_splits

        return decode_splits(batch, self.local_kv_heads, max_seq_len, self.sm_count)

    @torch.inference_mode()
    def execute(self, plan: StepPlan, previous_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run one step on this rank's shard; logits [num_logits, vocab] (every rank).
        previous_tokens: the last step's sampled tokens, for rows whose input is a placeholder.
        After a decode graph step, greedy_tokens holds each row's argmax token (on the
        device), else None."""
        self.greedy_tokens = None
        self.prompt_logits = None          # [len(prompt_rows), vocab] when the plan has some
        if self.graphs is not None and self.graphs.fits(plan, previous_tokens):
            logits, self.greedy_tokens = self.graphs.run(plan, previous_tokens)
            return logits
        step = self.prepare(plan)
        if previous_tokens is not None:
            source = step.from_previous
            step.input_ids = torch.where(source >= 0, previous_tokens[source.clamp(min=0)],
                                         step.input_ids)
        hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.meta)
        extra = step.prompt_rows.numel()
        if not extra:
            return self.model.compute_logits(hidden[step.logits_rows])
        logits = self.model.compute_logits(hidden[torch.cat([step.prompt_rows,
                                                             step.logits_rows])])
        self.prompt_logits = logits[:extra]
        return logits[extra:]


@dataclass
class PreparedStep:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_rows: torch.Tensor
    num_seqs: int
    max_blocks: int
    from_previous: torch.Tensor
    prompt_rows: torch.Tensor
