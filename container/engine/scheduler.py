"""Which sequences run in the next step, and how many of their tokens.

One rule: each scheduled sequence advances num_computed_tokens toward its length, within a
token budget per step (max_rolling_batch_prefill_tokens). A long prompt is thereby prefilled in
chunks, decodes take one token each, and new requests join as soon as budget, KV blocks and
max_rolling_batch_size allow. When blocks run out, the newest running sequence is preempted:
its blocks are freed and it goes back to the front of the queue, to be recomputed (often
straight from the prefix cache) when there is room.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step computes the sequence's last known token (so it samples)."""
        return self.seq.num_computed_tokens + self.num_new_tokens >= self.seq.num_tokens

    @property
    def num_draft(self) -> int:
        """Draft tokens this step verifies (computed after the last known token)."""
        return max(0, self.seq.num_computed_tokens + self.num_new_tokens - self.seq.num_tokens)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.total_preemptions = 0
        self.max_model_len = 1 << 62
        self.lora = None       # lora/registry.py: a device slot per admitted adapter request

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self.finish(seq, "abort")
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                self.finish(seq, "abort")
                return seq
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.blocks.free(seq)
        if self.lora is not None:
            self.lora.release(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.WAITING
        seq.num_computed_tokens = 0
        seq.draft_tokens = []
        if self.lora is not None:
            self.lora.release(seq)
        self.waiting.appendleft(seq)
        self.total_preemptions += 1

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        # running sequences first, oldest first
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:
                continue                      # preempted earlier in this loop
            if seq.num_output_tokens >= seq.sampling.max_new_tokens or \
                    seq.num_tokens >= self.max_model_len:
                continue                      # its last token is still on its way back
            count = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if count <= 0:
                continue
            if seq.draft_tokens:              # a decode verifying its drafts: 1 + k tokens
                del seq.draft_tokens[max(0, budget - 1):]
                count = 1 + len(seq.draft_tokens)
            while self.blocks.new_blocks_needed(seq, count) > self.blocks.num_free:
                victim = self.running[-1]
                self._preempt(victim)
                out.num_preempted += 1
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            self.blocks.allocate(seq, count)
            out.scheduled.append(ScheduledSeq(seq, count))
            budget -= count
        # then new (or preempted) sequences, first come first served; one whose LoRA adapter
        # finds no free device slot waits without holding back those behind it
        passed: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs \
                and not out.num_preempted:
            seq = self.waiting[0]
            if self.lora is not None and not self.lora.acquire(seq):
                passed.append(self.waiting.popleft())
                continue
            # a waiting sequence holds no blocks; one that wants prompt log-probs computes all
            cached = [] if seq.needs_prompt_logits else self.blocks.cached_prefix(seq)
            computed = len(cached) * self.blocks.block_size
            count = min(seq.num_tokens - computed, budget)
            new_blocks = self.blocks.blocks_for(computed + count) - len(cached)
            if new_blocks + self.blocks.cost_of_cached(cached) > self.blocks.num_free:
                if self.lora is not None:
                    self.lora.release(seq)
                break
            self.waiting.popleft()
            if cached:
                self.blocks.take_cached(seq, cached)
            self.blocks.allocate(seq, count)
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, count))
            budget -= count
        self.waiting.extendleft(reversed(passed))
        return out

    def advance(self, scheduled: ScheduledSeq) -> None:
        """After the step ran: the chunk's tokens are now in the KV cache."""
        scheduled.seq.num_computed_tokens += scheduled.num_new_tokens
        self.blocks.mark_computed(scheduled.seq)

    def roll_back(self, seq: Sequence) -> None:
        """After verification: the KV of rejected draft positions is no longer computed, and
        blocks that only held such positions go back to the pool."""
        seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens - 1)
        self.blocks.trim(seq, seq.num_tokens)

    def remove_finished(self) -> None:
        self.running = [s for s in self.running if not s.is_finished]
