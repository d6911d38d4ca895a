"""Decode steps replayed as CUDA graphs.

A decode step at small batch is hundreds of short kernels; launching them one by one from
Python costs more than running them. We record the model's decode forward once per batch-size
bucket into static buffers, then each step copies its inputs into those buffers and replays.
Rows beyond the real batch are padding: they write their KV to the cache's scratch slot and
attend to nothing (sequence length 0).
"""

from __future__ import annotations

import logging
import time

import torch

from .layers.attention import AttentionMetadata

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(self, runner, max_batch: int, max_blocks: int):
        self.runner = runner
        self.max_batch = max_batch
        self.max_blocks = max_blocks
        device = runner.device
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slots = torch.full((max_batch,), runner.scratch_slot, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int64, device=device)
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
        model = self.runner.model
        hidden = model(self.input_ids[:size], self.positions[:size], self.runner.kv_caches,
                       self._meta(size))
        return model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        started = time.monotonic()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(bucket_sizes(self.max_batch)):   # largest first: pool reuse
                self.splits[size] = self.runner.decode_splits(
                    size, self.max_blocks * self.runner.block_size)
                for _ in range(2):                                 # compile kernels, warm up
                    self._forward(size)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                    self.outputs[size] = self._forward(size)
                self.graphs[size] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured %d decode graphs (batch 1..%d) in %.1f s", len(self.graphs),
                 self.max_batch, time.monotonic() - started)

    def fits(self, step) -> bool:
        return step.num_seqs <= self.max_batch and step.max_blocks <= self.max_blocks

    def replay(self, step) -> torch.Tensor:
        count = step.num_seqs
        size = next(s for s in sorted(self.graphs) if s >= count)
        self.input_ids[:count].copy_(step.input_ids)
        self.positions[:count].copy_(step.positions)
        self.slots[:count].copy_(step.meta.slot_mapping)
        self.seq_lens[:count].copy_(step.meta.seq_lens)
        self.tables[:count, :step.max_blocks].copy_(step.meta.block_tables)
        if size > count:                       # padding rows: scratch slot, nothing to attend
            self.slots[count:size].fill_(self.runner.scratch_slot)
            self.seq_lens[count:size].zero_()
        self.graphs[size].replay()
        return self.outputs[size][step.logits_rows]
