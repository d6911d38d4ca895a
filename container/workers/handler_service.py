"""Runs a DJL-style handler: dynamic batching, streaming, timeouts, error mapping.

Rank 0 collects requests from the IPC server into batches (batch_size, max_batch_delay), calls
the handler, splits its Output into one reply per request and sends them back. Sync handlers
run on this thread one batch at a time, as in DJL; `async def` handlers run on an event-loop
thread so several batches can be in flight. With tensor parallelism every rank calls the
handler on the same Input and only rank 0's Output is returned.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import re
import threading
import time
import traceback
from dataclasses import dataclass, field

from djl_python import Input, Output
from djl_python.outputs import default_stream_formatter

from ..config.loader import ServingConfig
from ..errors import StartupError
from . import protocol
from .async_mode import call_handler_function
from .ipc_server import IpcServer

log = logging.getLogger(__name__)

_BATCH_KEY = re.compile(r"^batch_(\d+)[._](.*)$", re.DOTALL)
PREDICT_TIMEOUT_EXIT = 75


@dataclass
class Pending:
    identity: bytes
    request: protocol.HandleRequest


@dataclass
class Batch:
    items: list[Pending]
    started: float = field(default_factory=time.monotonic)


def _observe_queue_time(kind: str, arrivals: list[float]) -> None:
    from ..metrics import metrics

    now = time.time()
    histogram = metrics().queue_seconds.labels(kind)
    for arrival in arrivals:
        if arrival:
            histogram.observe(max(now - arrival, 0.0))


def _error_body(code: int, type_: str, message: str) -> bytes:
    import json

    return json.dumps({"code": code, "type": type_, "message": message}).encode()


def classify_exception(exc: BaseException) -> tuple[int, str]:
    """HTTP status and type for an exception raised by user code (by type, never by text)."""
    if isinstance(exc, MemoryError):
        return 507, "OutOfMemory"
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return 507, "OutOfMemory"
    except (ImportError, AttributeError):
        pass
    return 424, "HandlerError"


class HandlerService:
    def __init__(self, config: ServingConfig, handler, rank: int = 0, world_size: int = 1,
                 group_channel=None):
        self.config = config
        self.handler = handler
        self.rank = rank
        self.world_size = world_size
        self.channel = group_channel           # broadcasts batches to ranks 1..N-1
        self.batch_size = int(config.setting("batch_size"))
        self.max_batch_delay = int(config.setting("max_batch_delay")) / 1000.0
        self.predict_timeout = float(config.setting("predict_timeout"))
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None))
        self._running: dict[int, Batch] = {}
        self._running_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._held: Pending | None = None       # the first request of the next batch
        self.mode = handler_mode(config.options)
        self.ipc: IpcServer | None = None

    # start-up ------------------------------------------------------------------------------
    def initialize(self) -> None:
        """DJL's first call: an empty Input whose properties are the model's options."""
        properties = dict(self.config.options)
        properties.update({
            "model_dir": self.config.model_dir,
            "device_id": os.environ.get("LOCAL_RANK", "0") if self.config.gpu_count else "-1",
            "tensor_parallel_degree": str(self.config.tensor_parallel_degree),
            "batch_size": str(self.batch_size) if self.batch_size > 1 else "1",
        })
        init = Input()
        init.properties = properties
        if self.batch_size <= 1:
            init.properties.pop("batch_size")
        try:
            result = call_handler_function(self.handler, init)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except StartupError:
            raise
        except Exception as exc:
            log.error("handler initialization failed:\n%s", traceback.format_exc())
            raise StartupError(f"the handler failed to initialize: {type(exc).__name__}: {exc} "
                               "(traceback above)", exit_code=3) from None

    def model_info(self) -> dict:
        return {"kind": "handler", "name": self.config.model_name,
                "batch_size": self.batch_size}

    # rank 0 loop -------------------------------------------------------------------------------
    def serve(self, ipc: IpcServer, ready) -> None:
        from .handler_adapters import HandlerAdapters

        self.ipc = ipc
        self.adapters = HandlerAdapters(self)
        self.adapters.register_folder(self.config.model_dir)
        mode = self.mode
        if self.is_async or mode == "async":
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="handler-loop",
                             daemon=True).start()
        threading.Thread(target=self._watchdog, name="predict-timeout", daemon=True).start()
        log.info("handler mode: %s", mode)
        if mode == "async":
            self._serve_async(ready)
        elif mode == "rolling":
            from .rolling_handler import RollingBatchRunner

            ready()
            RollingBatchRunner(self).run()
        else:
            ready()
            self._serve_batches()

    def _serve_batches(self) -> None:
        while True:
            items = self._collect_batch()
            if not items:
                continue
            batch = Batch(items)
            _observe_queue_time("handler", [p.request.arrival_time for p in items])
            if self.is_async:
                asyncio.run_coroutine_threadsafe(self._run_async(batch), self.loop)
            else:
                self._run_sync(batch)

    def _serve_async(self, ready) -> None:
        from .async_mode import AsyncModeRunner

        runner = AsyncModeRunner(self)
        ready()
        while True:
            identity, message = self.ipc.inbox.get()
            if isinstance(message, protocol.Abort):
                runner.abort(message.request_id)
                continue
            if isinstance(message, protocol.AdapterRequest):
                self.adapters.handle(identity, message)
                continue
            _observe_queue_time("handler", [message.arrival_time])
            runner.submit(Pending(identity, message))

    def _collect_batch(self) -> list[Pending]:
        """Up to batch_size requests within max_batch_delay of the first, all asking for the same
        handler function (a request naming another one starts the next batch)."""
        items: list[Pending] = []
        if self._held is not None:
            items.append(self._held)
            self._held = None
        deadline = time.monotonic() + self.max_batch_delay if items else None
        while len(items) < self.batch_size:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            if deadline is not None and timeout == 0:
                break
            try:
                identity, message = self.ipc.inbox.get(timeout=timeout)
            except queue.Empty:
                break
            if isinstance(message, protocol.Abort):
                before = len(items)
                items = [p for p in items if p.request.request_id != message.request_id]
                self.ipc.finish(before - len(items))
                continue
            if isinstance(message, protocol.AdapterRequest):
                self.adapters.handle(identity, message)    # between batches, as DJL does
                continue
            pending = Pending(identity, message)
            if items and _function_name(pending) != _function_name(items[0]):
                self._held = pending
                break
            items.append(pending)
            if deadline is None:
                deadline = time.monotonic() + self.max_batch_delay
        return items

    def function_for(self, inputs: Input):
        """The handler, or the module function a request named in `handler` (the front end
        lets that through only where the operator allowed it)."""
        name = inputs.get_function_name()
        if not name:
            return self.handler
        import sys

        module = sys.modules.get(getattr(self.handler, "__module__", "") or "")
        function = getattr(module, name, None) if module is not None else None
        if not callable(function):
            raise LookupError(f"handler function {name!r} is not defined by the entry point")
        return function

    def build_input(self, items: list[Pending], batched_keys: bool | None = None) -> Input:
        """One Input: plain for batch_size 1, `batch_NNN.`-prefixed keys otherwise (DJL)."""
        if batched_keys is None:
            batched_keys = self.batch_size > 1
        batched = Input()
        batched.function_name = _function_name(items[0])
        if not batched_keys:
            request = items[0].request
            batched.properties = dict(request.properties)
            for key, value in request.content:
                batched.content.add(key, value)
            return batched
        batched.properties["batch_size"] = str(len(items))
        for index, pending in enumerate(items):
            prefix = f"batch_{index:03d}."
            for key, value in pending.request.properties.items():
                batched.properties[prefix + key] = value
            for key, value in pending.request.content:
                batched.content.add(prefix + key, value)
        return batched

    def track(self, batch: Batch) -> None:
        with self._running_lock:
            self._running[id(batch)] = batch

    def untrack(self, batch: Batch) -> bool:
        """False when the watchdog already answered this batch."""
        with self._running_lock:
            return self._running.pop(id(batch), None) is not None

    def call_handler(self, inputs: Input):
        function = self.function_for(inputs)
        if self.channel is not None:
            self.channel.broadcast_input(inputs)
        return call_handler_function(function, inputs)

    def _run_sync(self, batch: Batch) -> None:
        self.track(batch)
        try:
            output = self.call_handler(self.build_input(batch.items))
            if inspect.isawaitable(output):
                output = asyncio.run(_await(output))
        except BaseException as exc:  # noqa: BLE001 - user code: every failure becomes a reply
            if self.untrack(batch):
                self.reply_exception(batch, exc)
            return
        if self.untrack(batch):
            self.reply(batch, output)

    async def _run_async(self, batch: Batch) -> None:
        self.track(batch)
        try:
            output = self.call_handler(self.build_input(batch.items))
            if inspect.isawaitable(output):
                output = await output
        except BaseException as exc:  # noqa: BLE001
            if self.untrack(batch):
                self.reply_exception(batch, exc)
            return
        if self.untrack(batch):
            await asyncio.get_running_loop().run_in_executor(None, self.reply, batch, output)

    # replies --------------------------------------------------------------------------------
    def send_error(self, pending: Pending, code: int, type_: str, message: str) -> None:
        reply = protocol.HandleReply(pending.request.request_id, code, message,
                                     {"content-type": "application/json"},
                                     _error_body(code, type_, message))
        self.ipc.send(pending.identity, reply, finished=1)

    def send_reply(self, pending: Pending, output: Output, body: bytes) -> None:
        """One whole answer: the Output's status and properties with this body."""
        properties = {k.lower(): str(v) for k, v in output.properties.items()}
        self.ipc.send(pending.identity, protocol.HandleReply(
            pending.request.request_id, int(output.code), str(output.message), properties,
            body), finished=1)

    def reply_exception(self, batch: Batch, exc: BaseException) -> None:
        code, type_ = classify_exception(exc)
        log.error("handler raised %s:\n%s", type(exc).__name__,
                  "".join(traceback.format_exception(exc)))
        for pending in batch.items:
            self.send_error(pending, code, type_, f"{type(exc).__name__}: {exc}")

    def reply(self, batch: Batch, output) -> None:
        if output is None:
            output = Output()
        if not isinstance(output, Output):
            output = _coerce_output(output)
        if output.stream_content is not None:
            if len(batch.items) != 1:
                for pending in batch.items:
                    self.send_error(pending, 424, "HandlerError",
                                     "a streaming Output answers one request; use batch_size=1 "
                                     "for streaming handlers")
                return
            self._stream(batch.items[0], output)
            return
        parts = self._split(output, len(batch.items)) if self.batch_size > 1 else [
            _whole_body(output)]
        if parts is None:
            keys = output.content.get_keys()
            message = (f"the handler returned {len(keys)} output item(s) for a batch of "
                       f"{len(batch.items)} request(s); return one item per request with "
                       "Output.add(value, batch_index=i)")
            for pending in batch.items:
                self.send_error(pending, 424, "BatchSizeMismatch", message)
            return
        properties = {k.lower(): v for k, v in output.properties.items()}
        for pending, body in zip(batch.items, parts):
            reply = protocol.HandleReply(pending.request.request_id, int(output.code),
                                         str(output.message), properties, body)
            self.ipc.send(pending.identity, reply, finished=1)
        _run_finalize(output)

    def _split(self, output: Output, count: int) -> list[bytes] | None:
        """One body per request: by `batch_N.` keys, or in order when there are no such keys."""
        keyed: dict[int, list[bytes]] = {}
        plain: list[bytes] = []
        for key, value in output.content:
            match = _BATCH_KEY.match(key or "")
            if match:
                keyed.setdefault(int(match.group(1)), []).append(bytes(value))
            else:
                plain.append(bytes(value))
        if output.code >= 400 and not keyed and len(plain) == 1:
            return plain * count          # Output.error() on a batch fails every request
        if keyed:
            if plain or sorted(keyed) != list(range(count)):
                return None
            return [b"".join(keyed[i]) for i in range(count)]
        if len(plain) != count:
            return None
        return plain

    def _stream(self, pending: Pending, output: Output) -> None:
        request_id = pending.request.request_id
        properties = {k.lower(): v for k, v in output.properties.items()}
        head = protocol.HandleReply(request_id, int(output.code), str(output.message),
                                    properties, b"", streaming=True)
        self.ipc.send(pending.identity, head)
        formatter = output.stream_formatter or default_stream_formatter
        try:
            for item in _iterate(output.stream_content, self.loop):
                data = formatter(item)
                if isinstance(data, str):
                    data = data.encode("utf-8")
                if data:
                    self.ipc.send(pending.identity, protocol.StreamChunk(request_id, bytes(data)))
        except BaseException as exc:  # noqa: BLE001
            log.error("stream failed:\n%s", "".join(traceback.format_exception(exc)))
            self.ipc.send(pending.identity, protocol.StreamChunk(
                request_id, b"", last=True, error=f"{type(exc).__name__}: {exc}"), finished=1)
            return
        self.ipc.send(pending.identity, protocol.StreamChunk(request_id, b"", last=True),
                      finished=1)
        _run_finalize(output)

    # predict_timeout --------------------------------------------------------------------------
    def _watchdog(self) -> None:
        while True:
            time.sleep(min(0.25, self.predict_timeout / 4))
            now = time.monotonic()
            with self._running_lock:
                late = [b for b in self._running.values()
                        if now - b.started > self.predict_timeout]
            if not late:
                continue
            message = (f"the handler took longer than predict_timeout={self.predict_timeout:g}s; "
                       "the worker is being restarted")
            for batch in late:
                if self.untrack(batch):
                    for pending in batch.items:
                        self.send_error(pending, 504, "PredictTimeout", message)
            log.error("%s", message)
            time.sleep(0.2)  # let the IO thread flush the replies
            os._exit(PREDICT_TIMEOUT_EXIT)

    # passive ranks ----------------------------------------------------------------------------
    def follow(self) -> None:
        """Ranks 1..N-1: run the handler on every batch rank 0 broadcasts; drop the output."""
        while True:
            inputs = self.channel.receive_input()
            try:
                result = call_handler_function(self.function_for(inputs), inputs)
                if inspect.isawaitable(result):
                    asyncio.run(_await(result))
            except Exception:  # noqa: BLE001 - rank 0 reports errors
                log.exception("handler raised on rank %d", self.rank)


def handler_mode(options: dict[str, str]) -> str:
    """batch (DJL's default), async (option.async_mode) or rolling (option.rolling_batch set to
    anything but disable next to a model.py: the handler is the rolling batch)."""
    from ..config import keys
    from ..config.values import boolean

    if boolean(options.get("async_mode", "false")):
        return "async"
    rolling = keys.lookup("option.rolling_batch").parse(options.get("rolling_batch", "disable"))
    return "batch" if rolling == "disable" else "rolling"


def _function_name(pending: Pending) -> str | None:
    return next((v for k, v in pending.request.properties.items() if k.lower() == "handler"),
                None)


async def _await(awaitable):
    return await awaitable


def _iterate(stream, loop):
    """Iterate a sync or async iterator from this thread."""
    if hasattr(stream, "__aiter__"):
        iterator = stream.__aiter__()
        own_loop = loop is None
        loop = loop or asyncio.new_event_loop()
        try:
            while True:
                future = iterator.__anext__()
                try:
                    if own_loop:
                        yield loop.run_until_complete(future)
                    else:
                        yield asyncio.run_coroutine_threadsafe(future, loop).result()
                except StopAsyncIteration:
                    return
        finally:
            if own_loop:
                loop.close()
    else:
        yield from stream


def _whole_body(output: Output) -> bytes:
    return b"".join(bytes(v) for _, v in output.content)


def _coerce_output(value) -> Output:
    """Handlers sometimes return plain values; answer them as DJL would (JSON or bytes)."""
    output = Output()
    output.add(value)
    if not isinstance(value, (bytes, bytearray, str)):
        output.add_property("content-type", "application/json")
    return output


def _run_finalize(output: Output) -> None:
    if output.finalize_function:
        function, args = output.finalize_function
        try:
            function(*args)
        except Exception:  # noqa: BLE001
            log.exception("Output.finalize function failed")
