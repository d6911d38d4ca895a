"""A user's model.py as the rolling batch (option.rolling_batch set beside a model.py).

DJL's contract: the handler is called again and again with every request in flight, as one
batched Input (`batch_size`, `batch_NNN.`-prefixed properties and content, in the order the
requests joined). For each index it adds one item, a JSON map `{"data": ..., "last": ...}`
(`Output.add_as_json(..., batch_index=i)`). Each item's data is streamed to its request at
once; a request whose item says `last` is answered in full and leaves the batch, and a new
request joins at the end. The handler keeps its own per-request state in that order.
"""

from __future__ import annotations

import inspect
import logging
import queue
import re
import traceback

from djl_python import Output

from . import protocol
from .handler_items import Piece, decode_binary_map, decode_json_map, pieces

log = logging.getLogger(__name__)

_BATCH_KEY = re.compile(r"^batch_(\d+)[._](.*)$", re.DOTALL)
DEFAULT_MAX_ROLLING_BATCH_SIZE = 32


class RollingBatchRunner:
    def __init__(self, service):
        self.service = service                 # HandlerService: ipc, build_input, replies
        self.active: list = []                 # Pending, in the order they joined
        self.started: set[str] = set()         # request ids whose head reply was sent
        self.waiting: list = []
        self.max_size = int(service.config.options.get("max_rolling_batch_size")
                            or DEFAULT_MAX_ROLLING_BATCH_SIZE)

    def run(self) -> None:
        from .handler_service import Batch

        while True:
            self._admit(block=not self.active)
            if not self.active:
                continue
            batch = Batch(list(self.active))
            self.service.track(batch)
            try:
                output = self.service.call_handler(
                    self.service.build_input(self.active, batched_keys=True))
                if inspect.isawaitable(output):
                    import asyncio

                    output = asyncio.run(output)
            except BaseException as exc:  # noqa: BLE001 - user code: every failure is a reply
                if self.service.untrack(batch):
                    self._fail_all(exc)
                continue
            if self.service.untrack(batch):
                self._deliver(output)

    # requests joining and leaving ---------------------------------------------------------------
    def _admit(self, block: bool) -> None:
        inbox = self.service.ipc.inbox
        while True:
            try:
                identity, message = inbox.get(block=block and not self.waiting)
            except queue.Empty:
                break
            block = False
            if isinstance(message, protocol.Abort):
                self._abort(message.request_id)
                continue
            if isinstance(message, protocol.AdapterRequest):
                self.service.adapters.handle(identity, message)
                continue
            from .handler_service import Pending

            self.waiting.append(Pending(identity, message))
        free = self.max_size - len(self.active)
        if free > 0 and self.waiting:
            self.active.extend(self.waiting[:free])
            del self.waiting[:free]

    def _abort(self, request_id: str) -> None:
        for group in (self.active, self.waiting):
            for pending in list(group):
                if pending.request.request_id == request_id:
                    group.remove(pending)
                    self.started.discard(request_id)
                    self.service.ipc.finish(1)

    def _finish(self, pending) -> None:
        self.active.remove(pending)
        self.started.discard(pending.request.request_id)

    # answers -----------------------------------------------------------------------------------
    def _fail_all(self, exc: BaseException) -> None:
        log.error("rolling batch handler raised:\n%s", "".join(traceback.format_exception(exc)))
        from .handler_service import classify_exception

        code, type_ = classify_exception(exc)
        for pending in list(self.active):
            self._fail(pending, code, type_, f"{type(exc).__name__}: {exc}")

    def _fail(self, pending, code: int, type_: str, message: str) -> None:
        request_id = pending.request.request_id
        if request_id in self.started:
            self.service.ipc.send(pending.identity, protocol.StreamChunk(
                request_id, b"", last=True, error=message), finished=1)
        else:
            self.service.send_error(pending, code, type_, message)
        self._finish(pending)

    def _deliver(self, output) -> None:
        if not isinstance(output, Output):
            output = Output().add(output) if output is not None else Output()
        by_index: dict[int, list[bytes]] = {}
        for key, value in output.content:
            match = _BATCH_KEY.match(key or "")
            if match:
                by_index.setdefault(int(match.group(1)), []).append(value)
        if output.code >= 400 and not by_index:
            body = b"".join(bytes(v) for _, v in output.content)
            for pending in list(self.active):
                self._fail(pending, int(output.code), "HandlerError",
                           body.decode("utf-8", errors="replace") or str(output.message))
            return
        for index, pending in enumerate(list(self.active)):
            if index not in by_index:
                self._fail(pending, 424, "BatchSizeMismatch",
                           f"the rolling batch handler answered no item for batch index {index} "
                           f"of {len(self.active)}; add one per request with "
                           "Output.add_as_json({'data': ..., 'last': ...}, batch_index=i)")
                continue
            found = pieces(by_index[index], [decode_json_map, decode_binary_map])
            self._send(pending, output, found)

    def _send(self, pending, output: Output, found: list[Piece]) -> None:
        request_id = pending.request.request_id
        ipc = self.service.ipc
        if request_id not in self.started:
            self.started.add(request_id)
            properties = {k.lower(): str(v) for k, v in output.properties.items()}
            for piece in found:
                properties.update({k.lower(): v for k, v in piece.properties.items()})
            code = next((p.code for p in found if p.code), 200)
            ipc.send(pending.identity, protocol.HandleReply(
                request_id, code, "OK", properties, b"", streaming=True))
        for piece in found:
            if piece.error is not None:
                self._fail(pending, piece.code or 424, "HandlerError", piece.error)
                return
            if piece.data:
                ipc.send(pending.identity, protocol.StreamChunk(request_id, piece.data))
        if any(p.last for p in found):
            ipc.send(pending.identity, protocol.StreamChunk(request_id, b"", last=True),
                     finished=1)
            self._finish(pending)
