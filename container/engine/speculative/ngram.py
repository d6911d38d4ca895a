"""N-gram prompt lookup: draft tokens copied from where the sequence's own suffix appeared
before (in its prompt or output). No weights, no device work; the proposal is a point mass."""

from __future__ import annotations

import numpy as np


class TokenHistory:
    """A sequence's tokens as a growing numpy array (appended to, never rebuilt per step)."""

    def __init__(self):
        self.array = np.empty(256, np.int64)
        self.size = 0

    def update(self, tokens: list[int]) -> np.ndarray:
        if len(tokens) < self.size:                  # cannot happen (tokens only grow): reset
            self.size = 0
        new = tokens[self.size:]
        if self.size + len(new) > len(self.array):
            grown = np.empty(max(2 * len(self.array), self.size + len(new)), np.int64)
            grown[:self.size] = self.array[:self.size]
            self.array = grown
        self.array[self.size:self.size + len(new)] = new
        self.size += len(new)
        return self.array[:self.size]


def propose_ngram(tokens, k: int, longest: int, shortest: int, window: int = 4096) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the sequence's last n
    tokens, trying n from `longest` down to `shortest`. Only the last `window` tokens are
    searched, which bounds the work per step on long contexts."""
    history = np.asarray(tokens[-window:], dtype=np.int64)
    size = len(history)
    if k <= 0 or size < shortest + 1:
        return []
    # every earlier place the newest token occurs ends a candidate match; longer suffixes
    # narrow the candidates down
    ends = np.flatnonzero(history[:size - 1] == history[-1])
    matched = {1: ends}
    for n in range(2, min(longest, size - 1) + 1):
        ends = ends[ends >= n - 1]
        ends = ends[history[ends - (n - 1)] == history[size - n]]
        matched[n] = ends
    for n in range(min(longest, size - 1), shortest - 1, -1):
        if matched[n].size:
            start = int(matched[n][-1]) + 1
            return history[start:start + k].tolist()
    return []
