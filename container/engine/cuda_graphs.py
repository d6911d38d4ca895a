"""Decode steps replayed as CUDA graphs.

A decode step at small batch is hundreds of short kernels; launching them one by one from
Python costs more than running them. We record the model's decode forward once per batch-size
bucket, then each step is one upload of its plan into a fixed buffer and one replay.

Each graph starts by unpacking the plan into its static inputs (kernels/step_inputs.py),
taking placeholder tokens from the previous step's sampled tokens, and ends with the greedy
token of every row, written to the same fixed token buffer the next step reads: a greedy step
needs nothing outside the graph but the plan upload and the copy of its tokens to the host.
Rows beyond the real batch are padding: they write their KV to the cache's scratch slot and
attend to nothing (sequence length 0). With LoRA the graphs include the batched LoRA kernels,
reading each row's adapter slot from a fixed buffer filled before the replay.
"""

from __future__ import annotations

import bisect
import gc
import logging
import time

import numpy as np
import torch

from .kernels import gpu_kernels
from .layers.attention import AttentionMetadata

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(self, runner, max_batch: int, max_blocks: int):
        self.runner = runner
        self.max_batch = max_batch
        self.max_blocks = -(-max_blocks // 16) * 16      # plans pad their tables to 16 columns
        device = runner.device
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slots = torch.full((max_batch,), runner.scratch_slot, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int64, device=device)
        # a decode plan of max_batch sequences (StepPlan layout, with the LoRA slots at its
        # end when adapters are served), and the sampled tokens
        self.lora = runner.lora
        self.plan = torch.zeros(6 + 6 * max_batch + max_batch * max_blocks
                                + (max_batch if self.lora else 0), dtype=torch.int64,
                                device=device)
        # each row's adapter slot, read by the LoRA kernels inside the graphs (-1: none)
        self.lora_slots = torch.full((max_batch,), -1, dtype=torch.int64, device=device)
        # and its one-hot, read by the dense LoRA path of large batches (kernels/lora.py)
        self.lora_mask = (torch.zeros(max_batch, self.lora.context.max_loras, device=device,
                                      dtype=self.lora.context.dtype) if self.lora else None)
        self.tokens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.splits: dict[int, int] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:size], query_start_loc=None, seq_lens=self.seq_lens[:size],
            block_tables=self.tables[:size], max_query_len=1,
            max_seq_len=self.max_blocks * self.runner.block_size, query_start_host=None,
            seq_lens_host=None, num_decode=size, decode_only=True,
            decode_splits=self.splits[size], workspace=self.runner.decode_workspace)

    def _forward(self, size: int) -> torch.Tensor:
        from .kernels.step_inputs import unpack_decode_plan

        model = self.runner.model
        unpack_decode_plan(self.plan, self.tokens, self.input_ids[:size], self.positions[:size],
                           self.slots[:size], self.seq_lens[:size], self.tables[:size],
                           self.runner.scratch_slot)
        hidden = model(self.input_ids[:size], self.positions[:size], self.runner.kv_caches,
                       self._meta(size))
        logits = model.compute_logits(hidden)
        fused = gpu_kernels(logits)
        if fused:
            fused.argmax_rows(logits, self.tokens[:size])
        else:
            torch.argmax(logits, dim=-1, out=self.tokens[:size])
        return logits

    @torch.inference_mode()
    def capture(self) -> None:
        started = time.monotonic()
        # Dead objects that hold CUDA graphs (an earlier engine in this process) must not be
        # collected mid-capture: destroying a graph then invalidates the capture. Collect
        # them now, and keep the collector off until the captures are done.
        gc.collect()
        collecting = gc.isenabled()
        gc.disable()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                for size in reversed(bucket_sizes(self.max_batch)):   # largest first: pool reuse
                    self.splits[size] = self.runner.decode_splits(
                        size, self.max_blocks * self.runner.block_size)
                    if self.lora is not None:
                        self.lora.context.capture_with(self.lora_slots[:size],
                                                       self.lora_mask[:size])
                    for _ in range(2):                                 # compile kernels, warm up
                        self._forward(size)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                        self.outputs[size] = self._forward(size)
                    self.graphs[size] = graph
        finally:
            if self.lora is not None:
                self.lora.context.capture_with(None)
            if collecting:
                gc.enable()
        self.sizes = sorted(self.graphs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured %d decode graphs (batch 1..%d) in %.1f s", len(self.graphs),
                 self.max_batch, time.monotonic() - started)

    def fits(self, plan, previous_tokens: torch.Tensor | None) -> bool:
        """A decode step (one token and one logit per sequence) within the captured sizes."""
        num_tokens, num_seqs, max_blocks, num_logits, num_decode = (
            int(x) for x in plan.data[:5])
        return (0 < num_seqs <= self.max_batch and num_tokens == num_seqs == num_decode
                == num_logits and max_blocks <= self.max_blocks
                and plan.data.shape[0] <= self.plan.shape[0]
                and (previous_tokens is None or previous_tokens.numel() <= self.max_batch))

    def run(self, plan, previous_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n, vocab], greedy tokens [n]) of a decode step that fits()."""
        count = int(plan.data[1])
        size = self.sizes[bisect.bisect_left(self.sizes, count)]
        self.runner.upload_into(plan.data, self.plan)
        if self.lora is not None:
            start, rows = plan.layout(lora=True)["lora_slots"]
            slots = np.full(size, -1, dtype=np.int64)         # padding rows: no adapter
            slots[:rows] = plan.data[start:start + rows]
            self.lora_slots[:size].copy_(torch.from_numpy(slots))
            self.lora_mask[:size].copy_(torch.from_numpy(self.lora.context.one_hot(slots)))
        if previous_tokens is not None and previous_tokens.data_ptr() != self.tokens.data_ptr():
            # from an eager step or the sampler: where the graph reads placeholders from
            self.tokens[:previous_tokens.numel()].copy_(previous_tokens)
        self.graphs[size].replay()
        return self.outputs[size][:count], self.tokens[:count]
