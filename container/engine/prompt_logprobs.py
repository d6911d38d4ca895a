"""Which rows of a step give prompt log-probabilities, and for which prompt tokens.

The logit at position p scores the token at p + 1, so a chunk covering prompt positions
[s, s + n) scores targets s + 1 .. s + n (those still inside the prompt). Each target is planned
once: after a preemption the recomputed chunk skips targets already planned.
"""

from __future__ import annotations

from .scheduler import ScheduledSeq
from .sequence import Sequence


def plan_prompt_rows(scheduled: list[ScheduledSeq]) -> tuple[list[int], list[tuple[Sequence, int]]]:
    """Before the step's num_computed_tokens advance: (flat token rows of the step, the
    (sequence, target position) each row scores). Marks the targets planned."""
    rows: list[int] = []
    targets: list[tuple[Sequence, int]] = []
    cursor = 0
    for item in scheduled:
        seq = item.seq
        if seq.needs_prompt_logits:
            start = seq.num_computed_tokens
            for position in range(start, start + item.num_new_tokens):
                target = position + 1
                if seq.prompt_targets_planned < target < seq.num_prompt_tokens:
                    rows.append(cursor + position - start)
                    targets.append((seq, target))
                    seq.prompt_targets_planned = target
        cursor += item.num_new_tokens
    return rows, targets
