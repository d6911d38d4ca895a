"""One generation request inside the engine: its tokens, progress and KV blocks.

The scheduler has no prefill or decode phase: a sequence simply advances num_computed_tokens
toward len(token_ids); whenever a step computes its last known token, it samples a new one.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field

from ..workers.protocol import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    owner: bytes = b""                       # the front-end process that asked
    arrival_time: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0               # prompt tokens found in the prefix cache
    block_ids: list[int] = field(default_factory=list)
    num_published_blocks: int = 0            # full blocks already in the prefix cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    seed: int = 0
    # prompt log-probs (sampling.prompt_logprobs >= 0): targets are prompt positions 1..P-1
    prompt_targets_planned: int = 0          # the highest target position given a logit row
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list = field(default_factory=list)
    prompt_logprobs_sent: bool = False
    matcher: object = None                   # xgrammar GrammarMatcher with structured output
    lora: object = None                      # its LoRA adapter (lora/registry.py Registered)
    lora_slot: int = -1                      # the device slot serving it while admitted
    cache_salt: int = 0                      # prefix-cache namespace: the adapter's id
    # speculative decoding: tokens proposed for the positions after the newest one, verified
    # by the next step (they are not part of token_ids until accepted)
    draft_tokens: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.token_ids = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        # Unseeded requests still get a fixed seed, so a preempted request resumes identically.
        self.seed = self.sampling.seed if self.sampling.seed is not None else int.from_bytes(
            os.urandom(8), "little") >> 1

    @property
    def needs_prompt_logits(self) -> bool:
        """True until every prompt position has been planned a logit row: such a sequence
        must compute its whole prompt, so it takes nothing from the prefix cache."""
        return self.sampling.prompt_logprobs >= 0 and \
            self.prompt_targets_planned < self.num_prompt_tokens - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED
