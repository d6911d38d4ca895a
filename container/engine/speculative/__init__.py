"""Speculative decoding: proposers (n-gram lookup, a draft model) and the verifier.

Before each step the engine asks the Speculator for draft tokens of every decoding sequence
(seq.draft_tokens); the scheduler then plans 1 + k tokens for it and the model runner returns a
logit row per planned token; verify() keeps a prefix of the drafts and one more token, exactly
as the target distribution would have drawn them (rejection.py). The draft KV beyond what was
kept is rolled back by the scheduler. Requests whose sampling cannot be verified exactly
(structured output: its grammar state would have to follow unconfirmed tokens) decode one token
per step as before.
"""

from __future__ import annotations

import logging

import torch

from ...config.options_speculative import SpeculativeConfig
from ..sequence import Sequence, Status
from .ngram import TokenHistory, propose_ngram

log = logging.getLogger(__name__)


class Speculator:
    def __init__(self, config: SpeculativeConfig, draft=None):
        """draft: a DraftModel (draft.py) for method draft_model."""
        self.config = config
        self.draft = draft
        self.q: dict[int, torch.Tensor | None] = {}    # id(seq) -> its drafts' q rows
        self.declined: set[str] = set()
        self.histories: dict[str, TokenHistory] = {}   # ngram: each request's tokens
        self.counters = {"spec_verify_steps": 0, "spec_draft_tokens": 0,
                         "spec_accepted_tokens": 0, "spec_emitted_tokens": 0}

    def limit(self, seq: Sequence, max_model_len: int) -> int:
        """Draft tokens this sequence may verify next step (0: decode one token)."""
        if seq.status is not Status.RUNNING or seq.num_computed_tokens != seq.num_tokens - 1:
            return 0                        # still prefilling (or preempted)
        if seq.matcher is not None:
            if seq.request_id not in self.declined:
                self.declined.add(seq.request_id)
                log.info("request %s: structured output, decoded without speculation",
                         seq.request_id)
            return 0
        room = min(seq.sampling.max_new_tokens - seq.num_output_tokens,
                   max_model_len - seq.num_tokens) - 1
        return max(0, min(self.config.num_speculative_tokens, room))

    def propose(self, running: list[Sequence], max_model_len: int) -> None:
        """Set draft_tokens on each decoding sequence of the running batch."""
        self.q.clear()
        limits = [self.limit(seq, max_model_len) for seq in running]
        for seq in running:
            seq.draft_tokens = []
        if self.draft is not None:
            self.draft.forget_except({s.request_id for s in running})
            chosen = [(s, n) for s, n in zip(running, limits) if n > 0]
            proposals = self.draft.propose([s for s, _ in chosen], [n for _, n in chosen])
            for (seq, _), (tokens, q) in zip(chosen, proposals):
                seq.draft_tokens = tokens
                self.q[id(seq)] = q
            return
        spec = self.config
        for seq, n in zip(running, limits):
            if n > 0:
                history = self.histories.setdefault(seq.request_id, TokenHistory())
                seq.draft_tokens = propose_ngram(history.update(seq.token_ids), n,
                                                 spec.prompt_lookup_max, spec.prompt_lookup_min)

    def forget(self, request_id: str) -> None:
        """The request finished or was aborted: drop what is kept for it."""
        self.declined.discard(request_id)
        self.histories.pop(request_id, None)
        if self.draft is not None:
            self.draft.release(request_id)

    def record(self, drafted: int, accepted: int, emitted: int) -> None:
        counters = self.counters
        counters["spec_verify_steps"] += 1
        counters["spec_draft_tokens"] += drafted
        counters["spec_accepted_tokens"] += accepted
        counters["spec_emitted_tokens"] += emitted

    def stats(self) -> dict[str, float]:
        c = self.counters
        return {**c,
                "spec_acceptance_rate": c["spec_accepted_tokens"] / c["spec_draft_tokens"]
                if c["spec_draft_tokens"] else 0.0,
                "spec_tokens_per_step": c["spec_emitted_tokens"] / c["spec_verify_steps"]
                if c["spec_verify_steps"] else 0.0}
