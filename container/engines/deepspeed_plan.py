"""One step of the DeepSpeed rolling batch, as rank 0 broadcasts it to the other ranks.

Every rank holds the same batch of KV caches, so a step is described by three lists: which rows
of the current batch stay (in their new order), the token each of those rows feeds this step
(only rank 0 samples), and the prompts of the requests that join, appended after them. Packed
into one flat int64 array for engine/plan_channel.PlanChannel:

    [n_keep, n_new, keep..., tokens..., prompt lengths..., prompt tokens...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchPlan:
    keep: list[int]
    tokens: list[int]                 # one per kept row
    prompts: list[list[int]]          # new rows

    def __post_init__(self):
        if len(self.tokens) != len(self.keep):
            raise ValueError("a plan feeds exactly one token to each kept row")

    @property
    def is_empty(self) -> bool:
        return not self.keep and not self.prompts

    @property
    def data(self) -> np.ndarray:
        lengths = [len(p) for p in self.prompts]
        flat = [t for p in self.prompts for t in p]
        return np.asarray([len(self.keep), len(self.prompts), *self.keep, *self.tokens,
                           *lengths, *flat], dtype=np.int64)

    @classmethod
    def from_data(cls, data: np.ndarray) -> "BatchPlan":
        values = data.tolist()
        n_keep, n_new = values[0], values[1]
        cursor = 2
        keep = values[cursor:cursor + n_keep]
        cursor += n_keep
        tokens = values[cursor:cursor + n_keep]
        cursor += n_keep
        lengths = values[cursor:cursor + n_new]
        cursor += n_new
        prompts = []
        for length in lengths:
            prompts.append(values[cursor:cursor + length])
            cursor += length
        if cursor != len(values):
            raise ValueError(f"malformed batch plan: {len(values)} values, {cursor} read")
        return cls(keep, tokens, prompts)
