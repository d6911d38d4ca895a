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
    def __init__(self, engine: GenerationEngine, ipc: IpcServer, lora=None):
        """lora: the native engine's LoRA registry (lora/registry.py) when it serves adapters."""
        self.engine = engine
        self.ipc = ipc
        self.lora = lora
        self.adapter_of: dict[str, str] = {}     # request id -> its adapter (token metrics)
        from ..metrics import metrics

        self.metrics = metrics()
        self.queue_time = self.metrics.queue_seconds.labels("llm")

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
        stats = self.engine.stats()
        if self.lora is not None:
            stats.update(self.lora.stats())
        self.ipc.stats = {k: float(v) for k, v in stats.items()}

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
                    self.adapter_of.pop(message.request_id, None)
                    self.ipc.finish(1)
                    self.publish_stats()
            elif isinstance(message, protocol.AdapterRequest):
                self.adapters(identity, message)
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
        adapter = None
        if request.adapter:
            adapter = self._adapter(identity, request)
            if adapter is None:
                return
        try:
            if adapter is not None:
                self.engine.add_request(request.request_id, request.prompt_token_ids,
                                        request.sampling, identity, lora=adapter)
            else:
                self.engine.add_request(request.request_id, request.prompt_token_ids,
                                        request.sampling, identity)
        except ValueError as error:             # e.g. a grammar that does not compile
            delta = protocol.TokenDelta(request.request_id, [], None, "error", str(error))
            self.ipc.send(identity, protocol.TokenBatch([delta]), finished=1)
            return
        if request.arrival_time:
            self.queue_time.observe(max(time.time() - request.arrival_time, 0.0))
        if self.lora is not None:
            name = request.adapter or "none"
            self.adapter_of[request.request_id] = name
            self.metrics.lora_requests.labels(name).inc()
            self.metrics.lora_tokens.labels(name, "prompt").inc(len(request.prompt_token_ids))

    def _adapter(self, identity: bytes, request: protocol.GenerateRequest):
        """The registered adapter a request names; None after answering 404 (or 400 when this
        engine serves no adapters): never a silent fall-back to the base model."""
        if self.lora is None:
            reply = protocol.Rejected(request.request_id, 400, "AdaptersNotEnabled",
                                      f"adapter {request.adapter!r}: this model serves no LoRA "
                                      "adapters (start it with option.enable_lora=true)")
            self.ipc.send(identity, reply, finished=1)
            return None
        from .lora.errors import LoRAError

        try:
            return self.lora.get(request.adapter)
        except LoRAError as error:
            self.ipc.send(identity, protocol.Rejected(request.request_id, error.code,
                                                      error.type, error.message), finished=1)
            return None

    def adapters(self, identity: bytes, message: protocol.AdapterRequest) -> None:
        from .lora.api import answer, reply

        if self.lora is None:
            code, body = 501, {"code": 501, "type": "AdaptersNotSupported", "message":
                               "this model serves no LoRA adapters: start it with "
                               "option.enable_lora=true"}
        else:
            code, body = answer(self.lora, message)
        self.ipc.send(identity, reply(message, code, body), finished=1)
        self.publish_stats()

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
            if self.lora is not None:
                name = (self.adapter_of.pop(out.request_id, "none") if out.finished
                        else self.adapter_of.get(out.request_id, "none"))
                self.metrics.lora_tokens.labels(name, "generated").inc(len(out.new_token_ids))
        for owner, deltas in by_owner.items():
            self.ipc.send(owner, protocol.TokenBatch(deltas), finished=finished[owner])
