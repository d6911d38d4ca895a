"""TensorRT-LLM's LLM behind the GenerationEngine contract (container/engine/interface.py).

TensorRT-LLM batches in flight by itself; this class only feeds it and collects. Each request
becomes one `llm.generate_async(prompt_token_ids, streaming=True)` started on an asyncio loop
in a thread of its own (TensorRT-LLM's streamed results are async iterators and must be
created inside a running loop); that thread pushes each update's new tokens onto a queue, and
step() hands whatever arrived to the serving loop as TokenOutputs, one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine.interface import TokenOutput
from ..workers.protocol import SamplingParams
from .trtllm_requests import read_progress, sampling_kwargs

log = logging.getLogger(__name__)

STEP_WAIT_S = 0.01      # step() waits this long for news, so the serving loop never spins


@dataclass
class _Request:
    request_id: str
    owner: bytes
    num_prompt_tokens: int
    want_logprobs: bool
    aborted: bool = False
    handle: Any = None          # TensorRT-LLM's RequestOutput, set on the loop thread


@dataclass
class _Update:
    request_id: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class _Merged:
    request: _Request
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    error: str | None = None


class TrtLlmEngine:
    def __init__(self, llm, make_sampling_params: Callable[..., Any], max_model_len: int,
                 max_input_len: int, vocab_size: int, eos_token_ids: list[int]):
        self.llm = llm
        self.make_sampling_params = make_sampling_params   # tensorrt_llm.SamplingParams
        self.max_model_len = max_model_len
        self.max_input_len = max_input_len
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._live: dict[str, _Request] = {}
        self._updates: queue.Queue[_Update] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trtllm-results",
                                        daemon=True)
        self._thread.start()
        self.counters = {"steps": 0, "prompt_tokens": 0, "generated_tokens": 0,
                         "requests_finished": 0, "requests_failed": 0}

    # GenerationEngine --------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    sampling: SamplingParams, owner: bytes) -> None:
        request = _Request(request_id, owner, len(prompt_token_ids), sampling.logprobs)
        self._live[request_id] = request
        self.counters["prompt_tokens"] += len(prompt_token_ids)
        if len(prompt_token_ids) > self.max_input_len:
            self._fail(request_id, f"the prompt has {len(prompt_token_ids)} tokens; this "
                                   f"TensorRT-LLM engine takes at most max_input_len="
                                   f"{self.max_input_len}: shorten the prompt, or rebuild with "
                                   "a larger option.max_input_len")
            return
        try:
            params = self.make_sampling_params(**sampling_kwargs(sampling, self.eos_token_ids))
        except (TypeError, ValueError) as exc:
            self._fail(request_id, f"TensorRT-LLM refused the sampling parameters: {exc}")
            return
        asyncio.run_coroutine_threadsafe(
            self._stream(request, list(prompt_token_ids), params), self._loop)

    def abort_request(self, request_id: str) -> bool:
        request = self._live.pop(request_id, None)
        if request is None:
            return False
        request.aborted = True
        self._loop.call_soon_threadsafe(self._abort_on_loop, request)
        return True

    def has_work(self) -> bool:
        return bool(self._live)

    def step(self) -> list[TokenOutput]:
        try:
            updates = [self._updates.get(timeout=STEP_WAIT_S)]
        except queue.Empty:
            return []
        while True:
            try:
                updates.append(self._updates.get_nowait())
            except queue.Empty:
                break
        outputs = [self._output(m) for m in self._merge(updates)]
        if outputs:
            self.counters["steps"] += 1
        return outputs

    def stats(self) -> dict[str, float]:
        return {"running": len(self._live), "waiting": 0, **self.counters}

    def heartbeat(self) -> None:
        """Nothing to do: ranks 1..N-1 wait in TensorRT-LLM's own MPI worker loop."""

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    # the loop thread ---------------------------------------------------------------------------
    async def _stream(self, request: _Request, prompt: list[int], params) -> None:
        if request.aborted:
            return
        sent = 0
        try:
            handle = self.llm.generate_async(prompt, sampling_params=params, streaming=True)
            request.handle = handle
            if request.aborted:          # aborted while generate_async was starting
                handle.abort()
                return
            async for result in handle:
                if request.aborted:
                    return
                progress = read_progress(result.outputs[0], sent, self.eos_token_ids,
                                         request.want_logprobs)
                sent = progress.sent
                reason = progress.finish_reason
                if reason == "cancelled":        # TensorRT-LLM dropped it, we did not
                    self._fail(request.request_id, "TensorRT-LLM cancelled the request")
                    return
                if reason not in (None, "length", "eos_token", "stop_sequence"):
                    self._fail(request.request_id, f"TensorRT-LLM ended the request: {reason}")
                    return
                if progress.new_token_ids or reason:
                    self._updates.put(_Update(request.request_id, progress.new_token_ids,
                                              progress.logprobs, reason))
                if reason:
                    return
            self._fail(request.request_id, "TensorRT-LLM ended the stream without a finish "
                                           "reason")
        except Exception as exc:  # noqa: BLE001 - any library error fails this request only
            if not request.aborted:
                log.exception("request %s failed in TensorRT-LLM", request.request_id)
                self._fail(request.request_id, f"TensorRT-LLM failed: {type(exc).__name__}: "
                                               f"{' '.join(str(exc).split())}")

    @staticmethod
    def _abort_on_loop(request: _Request) -> None:
        if request.handle is not None:
            try:
                request.handle.abort()
            except Exception:  # noqa: BLE001 - already finished: nothing to free
                log.debug("abort of %s after it finished", request.request_id)

    # helpers -----------------------------------------------------------------------------------
    def _fail(self, request_id: str, message: str) -> None:
        self._updates.put(_Update(request_id, [], None, "error", message))

    def _merge(self, updates: list[_Update]) -> list[_Merged]:
        merged: dict[str, _Merged] = {}
        for update in updates:
            request = self._live.get(update.request_id)
            if request is None:          # aborted, or a late update after its finish
                continue
            item = merged.setdefault(update.request_id, _Merged(request))
            item.token_ids.extend(update.token_ids)
            if update.logprobs is not None:
                item.logprobs = (item.logprobs or []) + update.logprobs
            if update.finish_reason:
                item.finish_reason, item.error = update.finish_reason, update.error
                self._live.pop(update.request_id, None)
        return list(merged.values())

    def _output(self, item: _Merged) -> TokenOutput:
        request = item.request
        self.counters["generated_tokens"] += len(item.token_ids)
        if item.finish_reason == "error":
            self.counters["requests_failed"] += 1
            log.warning("request %s failed: %s", request.request_id, item.error)
        elif item.finish_reason:
            self.counters["requests_finished"] += 1
        logprobs = item.logprobs if item.logprobs is not None and len(
            item.logprobs) == len(item.token_ids) else None
        output = TokenOutput(request.request_id, request.owner, item.token_ids, logprobs,
                             item.finish_reason, request.num_prompt_tokens)
        if item.error:
            # Carried to the client once TokenOutput/ServingLoop pass errors on (see README);
            # until then the request ends with finish_reason "error".
            output.error = item.error
        return output
