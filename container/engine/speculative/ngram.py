"""N-gram prompt lookup: draft tokens copied from where the sequence's own suffix appeared
before (in its prompt or output). No weights, no device work; the proposal is a point mass."""

from __future__ import annotations

import numpy as np


def propose_ngram(tokens: list[int], k: int, longest: int, shortest: int,
                  window: int = 4096) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the sequence's last n
    tokens, trying n from `longest` down to `shortest`. Only the last `window` tokens are
    searched, which bounds the work per step on long contexts."""
    if k <= 0 or len(tokens) < shortest + 1:
        return []
    history = np.asarray(tokens[-window:], dtype=np.int64)
    size = len(history)
    for n in range(min(longest, size - 1), shortest - 1, -1):
        suffix = history[size - n:]
        # every start i < size - n whose n tokens equal the suffix; the latest one wins
        views = np.lib.stride_tricks.sliding_window_view(history[:size - 1], n)
        hits = np.nonzero((views == suffix).all(axis=1))[0]
        hits = hits[hits < size - n]
        if hits.size:
            start = int(hits[-1]) + n
            return history[start:start + k].tolist()
    return []
