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
from .sampler import SamplingBatch, sample
from .scheduler import Scheduler
from .sequence import Sequence

log = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, eos_token_ids: list[int],
                 max_model_len: int, plan_channel=None):
        self.runner = runner
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

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # one step ----------------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        clock = time.perf_counter
        started = clock()
        decision = self.scheduler.schedule()
        if not decision.scheduled:
            return []
        self._count(decision)
        planned = clock()
        plan = StepPlan.build(decision.scheduled, self.runner.block_size)
        if self.plan_channel is not None:
            self.plan_channel.send(plan)
        launched = clock()
        logits = self.runner.execute(plan)
        executed = clock()
        sampling_rows = [s for s in decision.scheduled if s.samples]
        for item in decision.scheduled:
            self.scheduler.advance(item)
        outputs: list[TokenOutput] = []
        sampled = executed
        if sampling_rows:
            batch = SamplingBatch.build([self._sampling_row(s.seq) for s in sampling_rows],
                                        logits.device)
            tokens, logprobs = sample(logits, batch)
            tokens = tokens.tolist()                 # waits for the GPU
            logprobs = logprobs.tolist() if logprobs is not None else None
            sampled = clock()
            for i, item in enumerate(sampling_rows):
                seq = item.seq
                token = tokens[i]
                seq.token_ids.append(token)
                reason = self._stop_reason(seq, token)
                if reason:
                    self.scheduler.finish(seq, reason)
                    self.sequences.pop(seq.request_id, None)
                    self.counters["requests_finished"] += 1
                outputs.append(TokenOutput(
                    seq.request_id, seq.owner, [token],
                    [logprobs[i]] if logprobs is not None else None, reason,
                    seq.num_prompt_tokens, seq.num_cached_tokens))
        self.scheduler.remove_finished()
        finished = clock()
        seconds = self.seconds
        seconds["schedule"] += planned - started
        seconds["plan"] += launched - planned
        seconds["execute"] += executed - launched
        seconds["sample_and_wait"] += sampled - executed
        seconds["postprocess"] += finished - sampled
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

    def _sampling_row(self, seq: Sequence) -> dict:
        p = seq.sampling
        greedy = not p.do_sample or p.temperature == 0
        return {
            "temperature": 0.0 if greedy else float(p.temperature),
            "top_k": int(p.top_k),
            "top_p": float(p.top_p),
            "repetition_penalty": float(p.repetition_penalty),
            "seed": seq.seed,
            "step": seq.num_output_tokens,
            "tokens": seq.token_ids if p.repetition_penalty != 1.0 else [],
            "logprobs": p.logprobs,
        }

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.sampling
        if not p.ignore_eos and token in self.eos_token_ids:
            return "eos_token"
        if token in p.stop_token_ids:
            return "stop_sequence"
        if seq.num_output_tokens >= p.max_new_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None


@torch.inference_mode()
def follow_steps(runner: ModelRunner, plan_channel) -> None:
    """Ranks 1..N-1: run every plan rank 0 broadcasts, forever."""
    while True:
        plan = plan_channel.receive()
        if plan is not None:
            runner.execute(plan)
