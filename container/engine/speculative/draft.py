"""A draft model: a smaller checkpoint with the target's tokenizer, run by our own model runner
with a paged KV cache of its own, proposing k tokens per sequence one at a time.

Each request has a shadow Sequence here (its tokens as the draft saw them, its draft blocks).
A round first brings the draft's cache up to the sequence's newest token (the whole prompt the
first time, then the tokens verification kept), in chunks under the token budget, then runs
k - 1 one-token steps. What verification rejected is dropped from the shadow's cache at the next
round, by comparing its tokens with the target's.
"""

from __future__ import annotations

import torch

from ...workers.protocol import SamplingParams
from ..block_manager import BlockManager
from ..model_runner import ModelRunner, StepPlan
from ..sampler import SamplingBatch, choose_with_probs, sampling_row
from ..scheduler import ScheduledSeq
from ..sequence import Sequence
from .rejection import DRAFT_SALT


class DraftModel:
    def __init__(self, runner: ModelRunner, num_blocks: int, token_budget: int):
        self.runner = runner
        self.blocks = BlockManager(num_blocks, runner.block_size, enable_prefix_caching=False)
        self.token_budget = max(token_budget, 16)
        self.shadows: dict[str, Sequence] = {}
        self.known: dict[str, int] = {}     # request id -> tokens known to be the target's

    def forget_except(self, alive: set[str]) -> None:
        """Free the draft cache of requests that finished or were preempted."""
        for request_id in [r for r in self.shadows if r not in alive]:
            self.release(request_id)

    def release(self, request_id: str) -> None:
        shadow = self.shadows.pop(request_id, None)
        if shadow is not None:
            self.blocks.free(shadow)
        self.known.pop(request_id, None)

    def _shadow(self, seq: Sequence) -> Sequence:
        shadow = self.shadows.get(seq.request_id)
        if shadow is None:
            shadow = Sequence(seq.request_id, [], SamplingParams())
            self.shadows[seq.request_id] = shadow
            self.known[seq.request_id] = 0
        old, new = shadow.token_ids, seq.token_ids
        common = min(self.known[seq.request_id], len(new))
        while common < min(len(old), len(new)) and old[common] == new[common]:
            common += 1
        del old[common:]
        old.extend(new[common:])
        # the newest token is always recomputed, so the first step has a logit row
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, common, len(new) - 1)
        self.known[seq.request_id] = len(new)
        return shadow

    def propose(self, seqs: list[Sequence], limits: list[int]):
        """Per sequence: (draft tokens, their q rows [n, V] or None for point masses)."""
        out: list[tuple[list[int], torch.Tensor | None]] = [([], None)] * len(seqs)
        active = []                                    # (index in seqs, shadow, limit)
        for i, (seq, limit) in enumerate(zip(seqs, limits)):
            if limit <= 0:
                continue
            shadow = self._shadow(seq)
            need = seq.num_tokens + limit - 1 - shadow.num_computed_tokens
            if self.blocks.new_blocks_needed(shadow, need) > self.blocks.num_free:
                continue                               # no room in the draft cache: no drafts
            self.blocks.allocate(shadow, need)
            active.append((i, shadow, limit))
        if not active:
            return out
        drafted: dict[int, list[int]] = {i: [] for i, _, _ in active}
        probs: dict[int, list] = {i: [] for i, _, _ in active}
        self._catch_up([a for a in active], seqs, drafted, probs)
        for j in range(1, max(limit for _, _, limit in active)):
            step = [a for a in active if a[2] > j]
            if not step:
                break
            logits = self._run([ScheduledSeq(shadow, 1) for _, shadow, _ in step])
            self._sample(logits, step, seqs, drafted, probs)
        for i, _, _ in active:
            rows = probs[i]
            q = None if rows[0] is None else torch.stack(rows)
            out[i] = (drafted[i], q)
        return out

    def _catch_up(self, active, seqs, drafted, probs) -> None:
        """Compute each shadow's pending tokens in chunks; sample where a shadow completes."""
        pending = list(active)
        while pending:
            budget, scheduled, sampling, rest = self.token_budget, [], [], []
            for entry in pending:
                shadow = entry[1]
                left = shadow.num_tokens - shadow.num_computed_tokens
                if budget <= 0:
                    rest.append(entry)
                    continue
                count = min(left, budget)
                budget -= count
                scheduled.append(ScheduledSeq(shadow, count))
                (sampling if count == left else rest).append(entry)
            logits = self._run(scheduled)
            self._sample(logits, sampling, seqs, drafted, probs)
            pending = rest

    def _run(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        plan = StepPlan.build(scheduled, self.runner.block_size)
        logits = self.runner.execute(plan)
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        return logits

    def _sample(self, logits, entries, seqs, drafted, probs) -> None:
        """Draw each entry's next draft token (logit rows in entry order) and keep its q."""
        if not entries:
            return
        rows = []
        for i, shadow, _ in entries:
            seq = seqs[i]
            row = sampling_row(seq.sampling, seq.seed ^ DRAFT_SALT,
                               seq.num_output_tokens + len(drafted[i]), lambda: [])
            # the draft's q may be any distribution: temperature and truncation (to propose
            # what the target may accept), no penalties or biases
            row.update(repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                       tokens=[], output=[], bias=[], logprobs=False, top_logprobs=0)
            rows.append(row)
        batch = SamplingBatch.build(rows, logits.device)
        tokens, _, q = choose_with_probs(logits, batch)
        host = tokens.tolist()
        for r, (i, shadow, _) in enumerate(entries):
            drafted[i].append(host[r])
            shadow.token_ids.append(host[r])
            sampled = rows[r]["temperature"] > 0
            probs[i].append(q[r].clone() if sampled else None)
