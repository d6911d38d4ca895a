"""The engine interface every LLM engine offers: add, abort, step -> outputs.

step() is schedule, run, postprocess. Rank 0 owns the scheduler; with tensor parallelism the
step's plan is broadcast before running so every rank computes its shard of the same batch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import torch

from ..workers.protocol import SamplingParams
from .interface import TokenOutput
from .model_runner import ModelRunner, StepPlan
from .sampler import SamplingBatch, sample, sampling_row
from .scheduler import Scheduler
from .sequence import Sequence

log = logging.getLogger(__name__)


PLACEHOLDER = -1      # a sampled token not yet read back from the GPU


class Launched:
    """A step on its way through the GPU: what it computes and where its tokens will land."""

    def __init__(self, scheduled):
        self.scheduled = scheduled
        self.sampled: list[tuple[Sequence, int]] = []   # (sequence, index of its new token)
        self.rows: dict[int, int] = {}                  # id(sequence) -> row in tokens
        self.tokens: torch.Tensor | None = None         # on the device
        self.logprobs: torch.Tensor | None = None
        self._host = None
        self._event = None

    def copy_to_host(self) -> None:
        if self.tokens.is_cuda:
            host_tokens = torch.empty(self.tokens.shape, dtype=self.tokens.dtype, pin_memory=True)
            host_tokens.copy_(self.tokens, non_blocking=True)
            host_logprobs = None
            if self.logprobs is not None:
                host_logprobs = torch.empty(self.logprobs.shape, dtype=self.logprobs.dtype,
                                            pin_memory=True)
                host_logprobs.copy_(self.logprobs, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            self._host = (host_tokens, host_logprobs)
        else:
            self._host = (self.tokens, self.logprobs)

    def host_values(self) -> tuple[list[int], list[float] | None]:
        if self._host is None:
            return [], None
        if self._event is not None:
            self._event.synchronize()
        tokens, logprobs = self._host
        return tokens.tolist(), (logprobs.tolist() if logprobs is not None else None)


class LLMEngine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, eos_token_ids: list[int],
                 max_model_len: int, plan_channel=None, overlap: bool = False):
        self.runner = runner
        self.overlap = overlap
        self.in_flight: Launched | None = None
        scheduler.max_model_len = max_model_len
        self.vocab_size = runner.config.vocab_size
        self.scheduler = scheduler
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.plan_channel = plan_channel
        self.sequences: dict[str, Sequence] = {}
        self.seconds: dict[str, float] = defaultdict(float)   # time per phase of step()
        self.counters = {"steps": 0, "requests_finished": 0, "requests_aborted": 0,
                         "chunked_prefill_steps": 0, "cached_prompt_tokens": 0,
                         "prompt_tokens_computed": 0, "generated_tokens": 0}

    # requests ----------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
                    owner: bytes = b"") -> Sequence:
        seq = Sequence(request_id, list(prompt_token_ids), sampling, owner)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> bool:
        seq = self.scheduler.abort(request_id)
        self.sequences.pop(request_id, None)
        if seq is not None:
            self.counters["requests_aborted"] += 1
        return seq is not None

    def heartbeat(self) -> None:
        if self.plan_channel is not None:
            self.plan_channel.heartbeat()

    def stats(self) -> dict[str, float]:
        blocks = self.scheduler.blocks
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": blocks.num_blocks,
            "kv_blocks_used": blocks.num_blocks - blocks.num_free,
            "kv_blocks_referenced": blocks.num_referenced,
            "preemptions": self.scheduler.total_preemptions,
            **self.counters,
            **{f"seconds_{name}": value for name, value in self.seconds.items()},
        }

    # one step ----------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return self.in_flight is not None or self.scheduler.has_work()

    def step(self) -> list[TokenOutput]:
        """Schedule, run, postprocess. With overlap on, the next step is launched on the GPU
        before this one's tokens are read back, so the CPU's bookkeeping hides behind the
        GPU's work; its new tokens feed the next step on the device (placeholders on host)."""
        if not self._can_overlap():
            outputs = self._finalize(self.in_flight) if self.in_flight else []
            self.in_flight = None
            launched = self._launch()
            return outputs + (self._finalize(launched) if launched else [])
        launched = self._launch()
        outputs = self._finalize(self.in_flight) if self.in_flight else []
        self.in_flight = launched
        return outputs

    def _can_overlap(self) -> bool:
        # A repetition penalty needs every real token before sampling: run step by step.
        if not self.overlap:
            return False
        return not any(s.sampling.repetition_penalty != 1.0 for s in self.scheduler.running) \
            and not any(s.sampling.repetition_penalty != 1.0 for s in self.scheduler.waiting)

    def _launch(self) -> "Launched | None":
        clock = time.perf_counter
        started = clock()
        decision = self.scheduler.schedule()
        if not decision.scheduled:
            return None
        self._count(decision)
        planned = clock()
        previous = self.in_flight
        plan = StepPlan.build(decision.scheduled, self.runner.block_size,
                              previous.rows if previous else None)
        if self.plan_channel is not None:
            self.plan_channel.send(plan)
        launched = clock()
        logits = self.runner.execute(plan, previous.tokens if previous else None)
        executed = clock()
        sampling = [item.seq for item in decision.scheduled if item.samples]
        for item in decision.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        result = Launched(decision.scheduled)
        if sampling:
            batch = SamplingBatch.build([self._sampling_row(seq) for seq in sampling],
                                        logits.device)
            greedy = self.runner.greedy_tokens
            if greedy is not None and batch.all_greedy and batch.penalty_tokens is None \
                    and not batch.want_logprobs:
                tokens, logprobs = greedy, None        # the decode graph's own argmax
            else:
                tokens, logprobs = sample(logits, batch)
            # other ranks resolve the next step's placeholders from these (no host round trip)
            tokens = self.runner.tp.broadcast_tokens(tokens.contiguous())
            result.tokens, result.logprobs = tokens, logprobs
            for row, seq in enumerate(sampling):
                seq.token_ids.append(PLACEHOLDER)        # its value arrives in _finalize
                result.rows[id(seq)] = row
                result.sampled.append((seq, len(seq.token_ids) - 1))
            result.copy_to_host()
        self.seconds["schedule"] += planned - started
        self.seconds["plan"] += launched - planned
        self.seconds["execute"] += executed - launched
        self.seconds["sample"] += clock() - executed
        return result

    def _finalize(self, launched: "Launched") -> list[TokenOutput]:
        started = time.perf_counter()
        tokens, logprobs = launched.host_values()       # waits for that step's GPU work
        waited = time.perf_counter()
        outputs: list[TokenOutput] = []
        for i, (seq, position) in enumerate(launched.sampled):
            if seq.is_finished:                          # aborted, or stopped, while in flight
                continue
            token = tokens[i]
            seq.token_ids[position] = token
            reason = self._stop_reason(seq, token, position)
            if reason:
                self.scheduler.finish(seq, reason)
                self.sequences.pop(seq.request_id, None)
                self.counters["requests_finished"] += 1
            outputs.append(TokenOutput(
                seq.request_id, seq.owner, [token],
                [logprobs[i]] if logprobs is not None else None, reason,
                seq.num_prompt_tokens, seq.num_cached_tokens))
        for item in launched.scheduled:
            if not item.seq.is_finished:
                self.scheduler.blocks.mark_computed(item.seq)
        self.scheduler.remove_finished()
        self.seconds["wait"] += waited - started
        self.seconds["postprocess"] += time.perf_counter() - waited
        return outputs

    def _count(self, decision) -> None:
        counters = self.counters
        counters["steps"] += 1
        for item in decision.scheduled:
            seq = item.seq
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                counters["prompt_tokens_computed"] += item.num_new_tokens
                if not item.samples:
                    counters["chunked_prefill_steps"] += 1
                if seq.num_computed_tokens == seq.num_cached_tokens and seq.num_cached_tokens:
                    counters["cached_prompt_tokens"] += seq.num_cached_tokens
            if item.samples:
                counters["generated_tokens"] += 1

    @staticmethod
    def _sampling_row(seq: Sequence) -> dict:
        return sampling_row(seq.sampling, seq.seed, seq.num_output_tokens, lambda: seq.token_ids)

    def _stop_reason(self, seq: Sequence, token: int, position: int) -> str | None:
        p = seq.sampling
        if not p.ignore_eos and token in self.eos_token_ids:
            return "eos_token"
        if token in p.stop_token_ids:
            return "stop_sequence"
        produced = position + 1 - seq.num_prompt_tokens
        if produced >= p.max_new_tokens or position + 1 >= self.max_model_len:
            return "length"
        return None


@torch.inference_mode()
def follow_steps(runner: ModelRunner, plan_channel, until_idle: bool = False) -> None:
    """Ranks 1..N-1: run every plan rank 0 broadcasts, forever (until_idle: until its first
    heartbeat); receive each step's sampled tokens as rank 0 sends them, for the placeholders
    of the step after."""
    previous = None
    while True:
        plan = plan_channel.receive()
        if plan is None:
            if until_idle:
                return
            continue
        runner.execute(plan, previous)
        sampled = plan.layout()["logits_rows"][1]
        if sampled:
            previous = runner.tp.broadcast_tokens(
                torch.empty(sampled, dtype=torch.int64, device=runner.device))
