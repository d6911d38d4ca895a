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
from .prompt_logprobs import plan_prompt_rows
from .sampler import SamplingBatch, pack_logprobs, sample_with_top, sampling_row, unpack_logprobs
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
        self.logprobs: torch.Tensor | None = None       # [rows, 1 + 2k] packed (sampler.py)
        self.prompt_logprobs: torch.Tensor | None = None   # the same, for prompt targets
        self.prompt_targets: list[tuple[Sequence, int]] = []
        self._host = None
        self._event = None
        # speculative steps: (sequence, tokens to append, its first logit row), known on host
        self.verified: list[tuple[Sequence, list[int], int]] = []

    def copy_to_host(self) -> None:
        """Start the copies of the step's results; one event marks them all done."""
        values = (self.tokens, self.logprobs, self.prompt_logprobs)
        if self.tokens is not None and self.tokens.is_cuda or \
                self.prompt_logprobs is not None and self.prompt_logprobs.is_cuda:
            host = []
            for value in values:
                if value is None:
                    host.append(None)
                    continue
                pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                pinned.copy_(value, non_blocking=True)
                host.append(pinned)
            self._event = torch.cuda.Event()
            self._event.record()
            self._host = tuple(host)
        else:
            self._host = values

    def host_values(self) -> tuple[list[int], list | None, list | None]:
        if self._host is None:
            return [], None, None
        if self._event is not None:
            self._event.synchronize()
        return tuple(v.tolist() if v is not None else (None if i else []) for i, v in
                     enumerate(self._host))


class LLMEngine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, eos_token_ids: list[int],
                 max_model_len: int, plan_channel=None, overlap: bool = False,
                 speculator=None):
        """speculator: speculative/__init__.py's Speculator, None without speculation."""
        self.runner = runner
        self.speculator = speculator
        self.overlap = overlap
        self.in_flight: Launched | None = None
        scheduler.max_model_len = max_model_len
        self.vocab_size = runner.config.vocab_size
        self.scheduler = scheduler
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.plan_channel = plan_channel
        self.sequences: dict[str, Sequence] = {}
        self.tokenizer_dir: str | None = None         # for structured output (set by service)
        self._structured = None                        # StructuredDecoding, on first use
        self.seconds: dict[str, float] = defaultdict(float)   # time per phase of step()
        self.counters = {"steps": 0, "requests_finished": 0, "requests_aborted": 0,
                         "chunked_prefill_steps": 0, "mixed_steps": 0, "cached_prompt_tokens": 0,
                         "prompt_tokens_computed": 0, "generated_tokens": 0}

    # requests ----------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
                    owner: bytes = b"", lora=None) -> Sequence:
        """lora: the request's adapter (lora/registry.py Registered), None for the base."""
        seq = Sequence(request_id, list(prompt_token_ids), sampling, owner)
        if lora is not None:
            seq.lora, seq.cache_salt = lora, lora.lora_id
        if sampling.structured is not None:
            seq.matcher = self._grammar_matcher(sampling.structured)     # ValueError: refused
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> bool:
        seq = self.scheduler.abort(request_id)
        self.sequences.pop(request_id, None)
        if self.speculator is not None:
            self.speculator.forget(request_id)
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
            **(self.speculator.stats() if self.speculator is not None else {}),
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
        # A penalty over past tokens needs every real token before sampling: step by step.
        if not self.overlap or self.speculator is not None:
            return False      # speculation proposes from the newest tokens: they must be known
        return not any(_needs_history(s.sampling) for s in self.scheduler.running) \
            and not any(_needs_history(s.sampling) for s in self.scheduler.waiting)

    def _launch(self) -> "Launched | None":
        clock = time.perf_counter
        started = clock()
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running, self.max_model_len)
        decision = self.scheduler.schedule()
        if not decision.scheduled:
            return None
        self._count(decision)
        planned = clock()
        previous = self.in_flight
        prompt_rows, prompt_targets = plan_prompt_rows(decision.scheduled)
        plan = StepPlan.build(decision.scheduled, self.runner.block_size,
                              previous.rows if previous else None, prompt_rows,
                              lora=self.runner.lora is not None)
        if self.plan_channel is not None:
            self.plan_channel.send(plan)
        launched = clock()
        logits = self.runner.execute(plan, previous.tokens if previous else None)
        executed = clock()
        sampling = [item.seq for item in decision.scheduled if item.samples]
        drafts = [item.num_draft for item in decision.scheduled if item.samples]
        for item in decision.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        result = Launched(decision.scheduled)
        if prompt_targets:
            result.prompt_targets = prompt_targets
            result.prompt_logprobs = self._prompt_logprobs(prompt_targets, logits.device)
        if sampling and any(drafts):
            self._verify(logits, sampling, drafts, result)
        elif sampling:
            batch = SamplingBatch.build([self._sampling_row(seq) for seq in sampling],
                                        logits.device)
            greedy = self.runner.greedy_tokens
            if any(seq.matcher is not None for seq in sampling):
                batch.token_bitmask = self._structured.bitmask([s.matcher for s in sampling])
            if greedy is not None and batch.plain_greedy:
                tokens, logprobs = greedy, None        # the decode graph's own argmax
            else:
                tokens, logprobs = sample_with_top(logits, batch)
            # other ranks resolve the next step's placeholders from these (no host round trip)
            tokens = self.runner.tp.broadcast_tokens(tokens.contiguous())
            result.tokens, result.logprobs = tokens, logprobs
            for row, seq in enumerate(sampling):
                seq.token_ids.append(PLACEHOLDER)        # its value arrives in _finalize
                result.rows[id(seq)] = row
                result.sampled.append((seq, len(seq.token_ids) - 1))
        if sampling or prompt_targets:
            result.copy_to_host()
        self.seconds["schedule"] += planned - started
        self.seconds["plan"] += launched - planned
        self.seconds["execute"] += executed - launched
        self.seconds["sample"] += clock() - executed
        return result

    def _finalize(self, launched: "Launched") -> list[TokenOutput]:
        started = time.perf_counter()
        tokens, logprobs, prompt_logprobs = launched.host_values()   # waits for the GPU work
        waited = time.perf_counter()
        outputs: list[TokenOutput] = []
        for (seq, _), row in zip(launched.prompt_targets, prompt_logprobs or ()):
            value, top = unpack_logprobs(row, seq.sampling.prompt_logprobs)
            seq.prompt_logprobs.append(value)
            seq.prompt_top_logprobs.append(top)
        outputs += self._finish_verified(launched, logprobs)
        for i, (seq, position) in enumerate(launched.sampled):
            if seq.is_finished:                          # aborted, or stopped, while in flight
                continue
            token = tokens[i]
            seq.token_ids[position] = token
            reason = self._stop_reason(seq, token, position)
            if seq.matcher is not None and not reason:
                if not seq.matcher.accept_token(token):
                    log.warning("request %s: token %d is outside its grammar", seq.request_id,
                                token)
                if seq.matcher.is_terminated():
                    reason = "eos_token"                # the grammar is complete
            if reason:
                self.scheduler.finish(seq, reason)
                self.sequences.pop(seq.request_id, None)
                self.counters["requests_finished"] += 1
                if self.speculator is not None:
                    self.speculator.forget(seq.request_id)
            output = TokenOutput(seq.request_id, seq.owner, [token], None, reason,
                                 seq.num_prompt_tokens, seq.num_cached_tokens)
            if logprobs is not None:
                value, top = unpack_logprobs(logprobs[i], seq.sampling.top_logprobs)
                output.logprobs = [value]
                output.top_logprobs = [top] if seq.sampling.top_logprobs else None
            if seq.sampling.prompt_logprobs >= 0 and not seq.prompt_logprobs_sent:
                seq.prompt_logprobs_sent = True      # the first output carries them, once
                output.prompt_logprobs = seq.prompt_logprobs
                output.prompt_top_logprobs = seq.prompt_top_logprobs
            outputs.append(output)
        for item in launched.scheduled:
            if not item.seq.is_finished:
                self.scheduler.blocks.mark_computed(item.seq)
        self.scheduler.remove_finished()
        self.seconds["wait"] += waited - started
        self.seconds["postprocess"] += time.perf_counter() - waited
        return outputs

    def _verify(self, logits, sampling: list[Sequence], drafts: list[int],
                result: Launched) -> None:
        """Speculative step: every sampling row set verifies its drafts (rejection.py)."""
        from .speculative.rejection import verify

        rows, candidates, q_rows, q_parts, starts = [], [], [], [], []
        for seq, count in zip(sampling, drafts):
            starts.append(len(rows))
            proposal = seq.draft_tokens[:count]
            q = self.speculator.q.get(id(seq)) if count else None
            if q is not None:
                q_rows.extend(range(len(rows), len(rows) + count))
                q_parts.append(q[:count])
            for j in range(count + 1):
                # position j sees the drafts before it as history (penalties, min_tokens)
                rows.append(sampling_row(
                    seq.sampling, seq.seed, seq.num_output_tokens + j,
                    lambda seq=seq, j=j: seq.token_ids + seq.draft_tokens[:j],
                    self.eos_token_ids if seq.sampling.min_tokens else ()))
            candidates.extend(proposal + [-1])
        batch = SamplingBatch.build(rows, logits.device)
        if any(seq.matcher is not None for seq in sampling):
            # constrained requests never get drafts: their one row takes the grammar's mask
            batch.token_bitmask = self._structured.bitmask(
                [seq.matcher for seq, count in zip(sampling, drafts) for _ in range(count + 1)])
        verified = verify(logits, batch, drafts, candidates, q_rows,
                          torch.cat(q_parts) if q_parts else None)
        result.tokens = self.runner.tp.broadcast_tokens(verified.row_tokens.contiguous())
        result.logprobs = verified.logprobs
        for seq, count, accepted, tokens, start in zip(sampling, drafts, verified.accepted,
                                                       verified.tokens, starts):
            result.verified.append((seq, tokens, start))
            if count:
                self.speculator.record(count, accepted, len(tokens))

    def _finish_verified(self, launched: Launched, logprobs) -> list[TokenOutput]:
        """Append each verified sequence's kept tokens (up to a stop), roll its KV back."""
        outputs = []
        for seq, tokens, start in launched.verified:
            seq.draft_tokens = []
            if seq.is_finished:
                continue
            kept, reason = [], None
            for token in tokens:
                seq.token_ids.append(token)
                kept.append(token)
                reason = self._stop_reason(seq, token, len(seq.token_ids) - 1)
                if seq.matcher is not None and not reason:       # (one token: no drafts)
                    if not seq.matcher.accept_token(token):
                        log.warning("request %s: token %d is outside its grammar",
                                    seq.request_id, token)
                    if seq.matcher.is_terminated():
                        reason = "eos_token"
                if reason:
                    break
            self.counters["generated_tokens"] += len(kept) - 1
            if reason:
                self.scheduler.finish(seq, reason)
                self.sequences.pop(seq.request_id, None)
                self.speculator.forget(seq.request_id)
                self.counters["requests_finished"] += 1
            else:
                self.scheduler.roll_back(seq)
            output = TokenOutput(seq.request_id, seq.owner, kept, None, reason,
                                 seq.num_prompt_tokens, seq.num_cached_tokens)
            if logprobs is not None:
                unpacked = [unpack_logprobs(logprobs[start + i], seq.sampling.top_logprobs)
                            for i in range(len(kept))]
                output.logprobs = [value for value, _ in unpacked]
                output.top_logprobs = [top for _, top in unpacked] \
                    if seq.sampling.top_logprobs else None
            if seq.sampling.prompt_logprobs >= 0 and not seq.prompt_logprobs_sent:
                seq.prompt_logprobs_sent = True
                output.prompt_logprobs = seq.prompt_logprobs
                output.prompt_top_logprobs = seq.prompt_top_logprobs
            outputs.append(output)
        return outputs

    def _count(self, decision) -> None:
        counters = self.counters
        counters["steps"] += 1
        scheduled = decision.scheduled
        leading_decodes = next((i for i, item in enumerate(scheduled) if item.num_new_tokens != 1),
                               len(scheduled))
        if 1 < leading_decodes < len(scheduled):     # decodes batched beside prompt chunks
            counters["mixed_steps"] += 1
        for item in scheduled:
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
        return sampling_row(seq.sampling, seq.seed, seq.num_output_tokens, lambda: seq.token_ids,
                            self.eos_token_ids if seq.sampling.min_tokens else ())

    def _grammar_matcher(self, spec):
        if self._structured is None:
            if self.tokenizer_dir is None:
                raise ValueError("structured output needs the model's tokenizer")
            from .structured import StructuredDecoding

            self._structured = StructuredDecoding(self.tokenizer_dir, self.vocab_size,
                                                  sorted(self.eos_token_ids))
        try:
            return self._structured.matcher(spec)
        except Exception as error:                      # xgrammar's own error types
            raise ValueError(f"the grammar does not compile: {error}") from None

    def _prompt_logprobs(self, targets: list[tuple[Sequence, int]],
                         device: torch.device) -> torch.Tensor:
        """Packed log-probs of the prompt tokens this step scored, on the device."""
        logits = self.runner.prompt_logits.float()
        ids = torch.tensor([seq.token_ids[t] for seq, t in targets], dtype=torch.int64)
        k = max(seq.sampling.prompt_logprobs for seq, _ in targets)
        return pack_logprobs(torch.log_softmax(logits, dim=-1), ids.to(device), k)

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


def _needs_history(p: SamplingParams) -> bool:
    return (p.repetition_penalty != 1.0 or p.presence_penalty != 0 or p.frequency_penalty != 0
            or p.structured is not None)          # a grammar's next mask needs the token


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
        if isinstance(plan, dict):               # a LoRA slot decision of rank 0
            runner.lora.slots.apply(plan)
            continue
        runner.execute(plan, previous)
        sampled = plan.layout()["logits_rows"][1]
        if sampled:
            previous = runner.tp.broadcast_tokens(
                torch.empty(sampled, dtype=torch.int64, device=runner.device))
