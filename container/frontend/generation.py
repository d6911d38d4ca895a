"""One generation request seen from the front end: submit token ids, receive the engine's
token deltas, turn them into text pieces, stop on stop sequences, and always leave the engine
clean (an abort when the client goes away or a stop sequence ends the request early)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gevent

from ..errors import ServingError
from ..metrics import metrics
from ..text.incremental import IncrementalText
from ..text.tokenizer import TextTokenizer
from ..workers import protocol
from .engine_client import EngineClient, WorkerGone


@dataclass
class TokenInfo:
    id: int
    text: str                 # this token's own text
    log_prob: float | None
    special: bool


@dataclass
class Piece:
    """What one engine step added: tokens, and the text released with them."""
    tokens: list[TokenInfo]
    text: str


@dataclass
class Result:
    text: str
    finish_reason: str        # length | eos_token | stop_sequence
    tokens: list[TokenInfo] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_time: float | None = None
    started: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


class Generation:
    def __init__(self, client: EngineClient, tokenizer: TextTokenizer, request_id: str,
                 prompt_ids: list[int], sampling: protocol.SamplingParams,
                 stop_sequences: list[str] | None = None):
        self.client = client
        self.tokenizer = tokenizer
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.text = IncrementalText(tokenizer, prompt_ids, stop_sequences)
        self.result = Result("", "length", prompt_tokens=len(prompt_ids), started=time.monotonic())
        self.done = False
        self._box = None
        self._last_token_time: float | None = None

    def start(self) -> "Generation":
        generation = self.client.ready_generation()
        self._box = self.client.submit(protocol.GenerateRequest(
            self.request_id, generation, self.prompt_ids, self.sampling, time.time()))
        return self

    def pieces(self):
        """Yield a Piece per engine step until the request finishes; then self.result is set."""
        if self._box is None:
            self.start()
        try:
            while not self.done:
                message = self._box.get()
                if isinstance(message, WorkerGone):
                    raise ServingError(503, "WorkerDied", message.message, {"Retry-After": "5"})
                if isinstance(message, protocol.Rejected):
                    headers = {"Retry-After": "1"} if message.code == 503 else {}
                    raise ServingError(message.code, message.type, message.message, headers)
                piece = self._apply(message)
                if piece is not None:
                    yield piece
        finally:
            if self.done:
                self.client.release(self.request_id)
            else:
                self.client.abort(self.request_id)   # client left, or an error: free the KV
            self._record_end()

    def run(self) -> Result:
        for _ in self.pieces():
            pass
        return self.result

    def _apply(self, delta: protocol.TokenDelta) -> Piece | None:
        if delta.error:
            self.done = True
            raise ServingError(400 if delta.finish_reason == "error" else 500, "BadRequest",
                               delta.error)
        result = self.result
        if delta.token_ids:
            self._record_token_times(len(delta.token_ids))
        result.cached_tokens = delta.num_cached_tokens
        tokens = []
        for i, token in enumerate(delta.token_ids):
            special = token in self.tokenizer.special_ids
            tokens.append(TokenInfo(token, "" if special else self.tokenizer.token_text(token),
                                    delta.logprobs[i] if delta.logprobs else None, special))
        result.tokens.extend(tokens)
        update = self.text.add(delta.token_ids)
        text = update.text
        if update.stopped:
            result.finish_reason = "stop_sequence"
            self._finish_early()
        elif delta.finish_reason:
            result.finish_reason = delta.finish_reason
            self.done = True
        if self.done:
            text += self.text.finish() if not update.stopped else ""
            result.text = self.text.text
        return Piece(tokens, text)

    def _record_token_times(self, count: int) -> None:
        now = time.monotonic()
        m = metrics()
        if self.result.first_token_time is None:
            self.result.first_token_time = now
            m.ttft_seconds.observe(now - self.result.started)
            count -= 1
        elif self._last_token_time is not None:
            # several tokens in one delta were made over several steps: share the gap
            gap = (now - self._last_token_time) / count
            for _ in range(count):
                m.itl_seconds.observe(gap)
        self._last_token_time = now

    def _record_end(self) -> None:
        m = metrics()
        result = self.result
        m.generation_tokens.inc(len(result.tokens))
        if self.done:
            m.prompt_tokens.inc(result.prompt_tokens)
            m.e2e_seconds.observe(time.monotonic() - result.started)
            m.finished.labels(result.finish_reason).inc()
        elif self._box is not None:
            m.finished.labels("abort").inc()

    def _finish_early(self) -> None:
        """A stop sequence matched in the front end: the engine must stop this request too."""
        self.done = True
        self.client.abort(self.request_id)


def wait_all(generations: list[Generation]) -> list[Result]:
    """Run several generations concurrently (a list of LMI inputs) and return their results."""
    jobs = [gevent.spawn(g.run) for g in generations]
    gevent.joinall(jobs)
    for job in jobs:
        if job.exception is not None:
            for other in generations:
                if not other.done:
                    other.client.abort(other.request_id)
            raise job.exception
    return [job.value for job in jobs]
