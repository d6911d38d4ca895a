"""One generation request seen from the front end: submit token ids, receive the engine's
token deltas, turn them into text pieces, stop on stop sequences, and always leave the engine
clean (an abort when the client goes away or a stop sequence ends the request early)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.queue

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
    top: list[tuple[int, float]] | None = None     # the most likely alternatives, best first


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
    # prompt tokens 1..P-1 (when asked): their log-probs and top alternatives
    prompt_logprobs: list[float] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]]] | None = None

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.log_prob or 0.0 for t in self.tokens)

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


class Generation:
    def __init__(self, client: EngineClient, tokenizer: TextTokenizer, request_id: str,
                 prompt_ids: list[int], sampling: protocol.SamplingParams,
                 stop_sequences: list[str] | None = None, discard_output: bool = False,
                 kept_special: dict[int, str] | None = None, adapter: str = ""):
        """discard_output: the caller wants only the prompt's log-probs (OpenAI max_tokens=0):
        the one token the engine must generate is dropped. adapter: a LoRA adapter's name."""
        self.client = client
        self.tokenizer = tokenizer
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.text = IncrementalText(tokenizer, prompt_ids, stop_sequences, kept_special)
        self.result = Result("", "length", prompt_tokens=len(prompt_ids), started=time.monotonic())
        self.done = False
        self.discard_output = discard_output
        self.adapter = adapter
        self.first_output = gevent.event.Event()     # set once the prompt is computed
        self._box = None
        self._last_token_time: float | None = None

    def start(self) -> "Generation":
        generation = self.client.ready_generation()
        self._box = self.client.submit(protocol.GenerateRequest(
            self.request_id, generation, self.prompt_ids, self.sampling, time.time(),
            self.adapter))
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
        if delta.prompt_logprobs is not None:
            result.prompt_logprobs = delta.prompt_logprobs
            result.prompt_top_logprobs = delta.prompt_top_logprobs
        self.first_output.set()
        if self.discard_output:
            self.done = bool(delta.finish_reason)     # max_new_tokens=1: this is the last
            result.finish_reason = "length"
            return Piece([], "")
        tokens = []
        for i, token in enumerate(delta.token_ids):
            special = token in self.tokenizer.special_ids
            tokens.append(TokenInfo(token, "" if special else self.tokenizer.token_text(token),
                                    delta.logprobs[i] if delta.logprobs else None, special,
                                    delta.top_logprobs[i] if delta.top_logprobs else None))
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


def wait_all_staggered(generations: list[Generation]) -> list[Result]:
    """wait_all for samples of one prompt (n, best_of), the first one ahead (see above)."""
    if len(generations) == 1:
        return wait_all(generations)
    jobs = [gevent.spawn(generations[0].run)]
    waiter = gevent.spawn(generations[0].first_output.wait)
    gevent.wait([waiter, jobs[0]], count=1)
    jobs += [gevent.spawn(g.run) for g in generations[1:]]
    gevent.joinall(jobs)
    waiter.kill()
    for job in jobs:
        if job.exception is not None:
            for other in generations:
                if not other.done and other._box is not None:
                    other.client.abort(other.request_id)
            raise job.exception
    return [job.value for job in jobs]


def merged_pieces(generations: list[Generation]):
    """(index, piece) from several running generations, as they arrive (streaming n > 1)."""
    if len(generations) == 1:
        for piece in generations[0].pieces():
            yield 0, piece
        return
    inbox = gevent.queue.Queue()

    def pump(index, generation):
        try:
            for piece in generation.pieces():
                inbox.put((index, piece, None))
        except BaseException as error:      # noqa: BLE001 - re-raised in the consumer
            inbox.put((index, None, error))
        inbox.put((index, None, None))

    jobs = [gevent.spawn(pump, 0, generations[0])]
    waiter = gevent.spawn(generations[0].first_output.wait)
    gevent.wait([waiter, jobs[0]], count=1)
    waiter.kill()
    jobs += [gevent.spawn(pump, i, g) for i, g in enumerate(generations) if i]
    open_count = len(jobs)
    try:
        while open_count:
            index, piece, error = inbox.get()
            if error is not None:
                raise error
            if piece is None:
                open_count -= 1
                continue
            yield index, piece
    finally:
        gevent.killall([j for j in jobs if not j.dead])
        for g in generations:
            if not g.done and g._box is not None:
                g.client.abort(g.request_id)
