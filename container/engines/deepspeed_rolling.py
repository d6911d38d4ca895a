"""Rank 0's rolling batch for engine=DeepSpeed: a GenerationEngine over a PaddedKVBatch.

Each step rank 0 decides which rows stay, which waiting requests join (up to
max_rolling_batch_size rows and max_rolling_batch_prefill_tokens prompt tokens a step), packs that
into a BatchPlan, broadcasts it, runs it like every other rank, and samples with the shared
sampler (engine/sampler.py), so generation parameters and seeds behave exactly as in the native
engine. In static mode (kernel injection) requests join only an empty batch.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

from ..engine.interface import TokenOutput
from ..engine.sampler import SamplingBatch, sample, sampling_row
from ..workers.protocol import SamplingParams
from .deepspeed_batch import PaddedKVBatch
from .deepspeed_plan import BatchPlan


@dataclass(eq=False)
class Row:
    request_id: str
    owner: bytes
    prompt: list[int]
    sampling: SamplingParams
    seed: int
    output: list[int] = field(default_factory=list)
    live: bool = True            # false once finished or aborted; dropped at the next step

    @property
    def last_token(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    def sampling_row(self) -> dict:
        return sampling_row(self.sampling, self.seed, len(self.output),
                            lambda: self.prompt + self.output)


class DeepSpeedRollingBatch:
    def __init__(self, batch: PaddedKVBatch, vocab_size: int, max_model_len: int,
                 eos_token_ids: list[int], max_rows: int, prefill_tokens: int,
                 plan_channel=None):
        self.batch = batch
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = set(eos_token_ids)
        self.max_rows = max_rows
        self.prefill_tokens = prefill_tokens
        self.plan_channel = plan_channel
        self.waiting: deque[Row] = deque()
        self.running: list[Row] = []          # in the batch's row order
        self.last_plan: BatchPlan | None = None
        self.counters = {"steps": 0, "requests_finished": 0, "requests_aborted": 0,
                         "prompt_tokens_computed": 0, "generated_tokens": 0,
                         "requests_joined_running_batch": 0}

    # requests ----------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    sampling: SamplingParams, owner: bytes = b"") -> None:
        # Unseeded requests still get a fixed seed, as in the native engine.
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(
            os.urandom(8), "little") >> 1
        self.waiting.append(Row(request_id, owner, list(prompt_token_ids), sampling, seed))

    def abort_request(self, request_id: str) -> bool:
        for row in self.waiting:
            if row.request_id == request_id:
                self.waiting.remove(row)
                self.counters["requests_aborted"] += 1
                return True
        for row in self.running:
            if row.request_id == request_id and row.live:
                row.live = False               # its KV rows go at the next step
                self.counters["requests_aborted"] += 1
                return True
        return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def heartbeat(self) -> None:
        if self.plan_channel is not None:
            self.plan_channel.heartbeat()

    def stats(self) -> dict[str, float]:
        return {
            "running": sum(1 for r in self.running if r.live),
            "waiting": len(self.waiting),
            "batch_rows": self.batch.rows,
            "kv_slots": self.batch.kv_slots,
            **self.counters,
        }

    # one step ----------------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        keep = self._keep()
        kept = [self.running[i] for i in keep]
        joining = self._admit(kept)
        plan = BatchPlan(keep, [r.last_token for r in kept], [r.prompt for r in joining])
        self.last_plan = plan
        if self.plan_channel is not None:
            self.plan_channel.send(plan)
        logits = self.batch.execute(plan)
        self.running = kept + joining
        if plan.is_empty:
            return []
        self.counters["steps"] += 1
        self.counters["prompt_tokens_computed"] += sum(len(r.prompt) for r in joining)
        if kept:
            self.counters["requests_joined_running_batch"] += len(joining)
        live = [i for i, row in enumerate(self.running) if row.live]
        if not live:
            return []
        rows = [self.running[i] for i in live]
        sampling = SamplingBatch.build([r.sampling_row() for r in rows], logits.device)
        tokens, logprobs = sample(logits[live], sampling)
        tokens = tokens.tolist()
        logprobs = logprobs.tolist() if logprobs is not None else None
        outputs = []
        for i, row in enumerate(rows):
            row.output.append(tokens[i])
            reason = self._stop_reason(row, tokens[i])
            if reason:
                row.live = False
                self.counters["requests_finished"] += 1
            self.counters["generated_tokens"] += 1
            outputs.append(TokenOutput(row.request_id, row.owner, [tokens[i]],
                                       [logprobs[i]] if logprobs is not None else None, reason,
                                       len(row.prompt)))
        return outputs

    def _keep(self) -> list[int]:
        if self.batch.regroup:
            return [i for i, row in enumerate(self.running) if row.live]
        # static batch: every row keeps computing until the last one is done
        return list(range(len(self.running))) if any(r.live for r in self.running) else []

    def _admit(self, kept: list[Row]) -> list[Row]:
        if kept and not self.batch.regroup:
            return []
        joining: list[Row] = []
        budget = self.prefill_tokens
        while self.waiting and len(kept) + len(joining) < self.max_rows:
            size = len(self.waiting[0].prompt)
            if joining and size > budget:
                break                      # the first prompt always fits, however long
            budget -= size
            joining.append(self.waiting.popleft())
        return joining

    def _stop_reason(self, row: Row, token: int) -> str | None:
        p = row.sampling
        if not p.ignore_eos and token in self.eos_token_ids:
            return "eos_token"
        if token in p.stop_token_ids:
            return "stop_sequence"
        if len(row.output) >= p.max_new_tokens or len(row.prompt) + len(row.output) >= \
                self.max_model_len:
            return "length"
        return None
