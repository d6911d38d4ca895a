"""Rank 0's loop for any GenerationEngine: take requests, step, send each step's tokens.

Between steps it drains every message that arrived (new requests join the running batch, aborts
free memory at once); while idle it blocks on the inbox and sends heartbeats. Each step's new
tokens leave as one TokenBatch per front-end process.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import defaultdict

from ..workers import protocol
from ..workers.ipc_server import IpcServer
from .interface import GenerationEngine, TokenOutput

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


def check_request(engine: GenerationEngine, request: protocol.GenerateRequest) -> str | None:
    """Why the engine cannot run this request (the front end checks first; this is the last
    line of defence for any client of the socket)."""
    prompt = request.prompt_token_ids
    if not prompt:
        return "the prompt is empty"
    total = len(prompt) + request.sampling.max_new_tokens
    if total > engine.max_model_len:
        return (f"prompt ({len(prompt)} tokens) + max_new_tokens "
                f"({request.sampling.max_new_tokens}) exceeds max_model_len ({engine.max_model_len})")
    if max(prompt) >= engine.vocab_size or min(prompt) < 0:
        return "the prompt holds token ids outside the vocabulary"
    return None


class ServingLoop:
    def __init__(self, engine: GenerationEngine, ipc: IpcServer):
        self.engine = engine
        self.ipc = ipc
        from ..metrics import metrics

        self.queue_time = metrics().queue_seconds.labels("llm")

    def run_forever(self, ready) -> None:
        """Serve until the process ends; `ready()` announces the worker once its first
        figures are published (a /models or /metrics answer then always has them)."""
        engine = self.engine
        last_beat = time.monotonic()
        busy = False
        self.publish_stats()
        ready()
        while True:
            idle = not engine.has_work()
            if idle and busy:
                busy = False
                self.publish_stats()
                log.info("engine idle: %s", ", ".join(
                    f"{k}={v:g}" for k, v in sorted(engine.stats().items())))
            self.take_messages(block=idle)
            if engine.has_work():
                busy = True
                outputs = engine.step()
                last_beat = time.monotonic()
                if outputs:
                    self.send(outputs)
                self.publish_stats()
            elif time.monotonic() - last_beat > HEARTBEAT_S:
                engine.heartbeat()
                last_beat = time.monotonic()

    def publish_stats(self) -> None:
        self.ipc.stats = {k: float(v) for k, v in self.engine.stats().items()}

    def take_messages(self, block: bool) -> None:
        inbox = self.ipc.inbox
        try:
            item = inbox.get(timeout=HEARTBEAT_S / 2) if block else inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            identity, message = item
            if isinstance(message, protocol.GenerateRequest):
                self.add(identity, message)
            elif isinstance(message, protocol.Abort):
                if self.engine.abort_request(message.request_id):
                    self.ipc.finish(1)
                    self.publish_stats()
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return

    def add(self, identity: bytes, request: protocol.GenerateRequest) -> None:
        problem = check_request(self.engine, request)
        if problem:
            delta = protocol.TokenDelta(request.request_id, [], None, "error", problem)
            self.ipc.send(identity, protocol.TokenBatch([delta]), finished=1)
            return
        try:
            self.engine.add_request(request.request_id, request.prompt_token_ids,
                                    request.sampling, identity)
        except ValueError as error:             # e.g. a grammar that does not compile
            delta = protocol.TokenDelta(request.request_id, [], None, "error", str(error))
            self.ipc.send(identity, protocol.TokenBatch([delta]), finished=1)
            return
        if request.arrival_time:
            self.queue_time.observe(max(time.time() - request.arrival_time, 0.0))

    def send(self, outputs: list[TokenOutput]) -> None:
        by_owner: dict[bytes, list[protocol.TokenDelta]] = defaultdict(list)
        finished: dict[bytes, int] = defaultdict(int)
        for out in outputs:
            by_owner[out.owner].append(protocol.TokenDelta(
                out.request_id, out.new_token_ids, out.logprobs, out.finish_reason, out.error,
                out.num_prompt_tokens, out.num_cached_tokens, out.top_logprobs,
                out.prompt_logprobs, out.prompt_top_logprobs))
            if out.finished:
                finished[out.owner] += 1
        for owner, deltas in by_owner.items():
            self.ipc.send(owner, protocol.TokenBatch(deltas), finished=finished[owner])
