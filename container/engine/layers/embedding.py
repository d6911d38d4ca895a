"""Vocabulary-parallel embedding and LM head: each rank keeps an equal block of the vocabulary
(the last block padded), embeddings are summed across ranks, logits gathered."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import SINGLE, TensorParallel
from .linear import linear
from .partition import padded_share


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = SINGLE):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = padded_share(vocab_size, tp.size)
        self.start = tp.rank * self.per_rank
        self.local_rows = max(0, min(self.per_rank, vocab_size - self.start))
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.load_shard

    def load_shard(self, param, tensor_slice, shard_id=None):
        rows = tensor_slice[self.start:self.start + self.local_rows]
        if tuple(rows.shape[1:]) != tuple(param.shape[1:]):
            raise ValueError(f"embedding: checkpoint width {tuple(rows.shape)} does not match "
                             f"{tuple(param.shape)}")
        param.data.zero_()
        param.data[:self.local_rows].copy_(rows)

    def forward(self, input_ids: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        """reduce=False with tensor parallelism: this rank's partial rows (zero where the token
        is another rank's), for the next norm to reduce."""
        if not self.tp.enabled:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.local_rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0)
        return self.tp.all_reduce(out) if reduce else out


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for the full vocabulary: local block, then all-gather across ranks."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden, self.weight)
        if self.tp.enabled:
            logits = self.tp.all_gather_last_dim(logits)
        return logits[..., :self.vocab_size]
