"""The contract every LLM engine meets (native, DeepSpeed, TensorRT-LLM).

Rank 0's serving loop (serving_loop.py) drives any object with these methods; the front end,
formatters, errors and IPC are shared and never re-written per engine. Engines deal in token
ids; text is the front end's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..workers.protocol import SamplingParams


@dataclass
class TokenOutput:
    """New tokens of one request after a step."""
    request_id: str
    owner: bytes                       # the front-end process to send them to
    new_token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str | None = None   # length | eos_token | stop_sequence, once finished
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    error: str | None = None           # with finish_reason "error": what went wrong, for the client
    top_logprobs: list | None = None   # per new token: [(token id, log-prob)], best first
    prompt_logprobs: list[float] | None = None      # once: prompt tokens 1..P-1
    prompt_top_logprobs: list | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class GenerationEngine(Protocol):
    max_model_len: int
    vocab_size: int

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    sampling: SamplingParams, owner: bytes) -> None:
        """Queue a request; it joins the running batch at a later step."""

    def abort_request(self, request_id: str) -> bool:
        """Drop a request and free its memory; False if it is unknown (already finished)."""

    def has_work(self) -> bool:
        """True while any request is waiting or running."""

    def step(self) -> list[TokenOutput]:
        """Advance the batch one step; return every request's new tokens."""

    def stats(self) -> dict[str, float]:
        """Figures for /models and /metrics (running, waiting, KV blocks ...)."""

    def heartbeat(self) -> None:
        """Called while idle (tensor-parallel engines keep passive ranks' waits alive)."""
