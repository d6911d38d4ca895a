"""option.async_mode=true: one handler coroutine per request, started as the request arrives.

There is no batching wait: every request becomes a task on the handler's event loop, so many
are in flight at once. The coroutine returns an Output (one answer), None (204), or an async
generator of Outputs (a stream: each Output's pieces are sent as they come; a piece with
`last` ends it, as does the generator's end). A client that goes away cancels its task.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback

from djl_python import Input, Output

from . import protocol
from .handler_items import Piece, decode_binary_map, pieces

log = logging.getLogger(__name__)


def positional_arity(function) -> int:
    """How many positional arguments a handler requires (DJL's async handlers may take a
    second one, the socket of DJL's Python engine; here it is None)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 1
    required = [p for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return len(required)


def call_handler_function(function, inputs):
    """function(inputs), or function(inputs, None) for DJL async handlers that take a socket."""
    return function(inputs, None) if positional_arity(function) >= 2 else function(inputs)


def output_pieces(output: Output) -> list[Piece]:
    return pieces([value for _, value in output.content], [decode_binary_map])


class AsyncModeRunner:
    def __init__(self, service):
        self.service = service                 # HandlerService: ipc, loop, replies, tracking
        self.tasks: dict[str, asyncio.Future] = {}

    def submit(self, pending) -> None:
        future = asyncio.run_coroutine_threadsafe(self._run(pending), self.service.loop)
        self.tasks[pending.request.request_id] = future
        future.add_done_callback(lambda _: self.tasks.pop(pending.request.request_id, None))

    def abort(self, request_id: str) -> None:
        future = self.tasks.get(request_id)
        if future is not None:
            future.cancel()                    # the task sees CancelledError at its next await

    async def _run(self, pending) -> None:
        from .handler_service import Batch

        service = self.service
        batch = Batch([pending])
        service.track(batch)
        try:
            inputs = service.build_input([pending], batched_keys=False)
            function = service.function_for(inputs)
            if service.channel is not None:
                service.channel.broadcast_input(inputs)
            result = call_handler_function(function, inputs)
            if inspect.isawaitable(result):
                result = await result
            if inspect.isasyncgen(result):
                await self._stream(pending, batch, result)
                return
        except asyncio.CancelledError:
            if service.untrack(batch):
                service.ipc.finish(1)          # the client left; nothing to answer
            raise
        except BaseException as exc:  # noqa: BLE001 - user code: every failure becomes a reply
            if service.untrack(batch):
                service.reply_exception(batch, exc)
            return
        if not service.untrack(batch):
            return
        if result is None:
            service.send_reply(pending, Output(code=204, message="No content"), b"")
            return
        if isinstance(result, Output) and result.stream_content is None:
            found = output_pieces(result)
            if any(p.last is not None for p in found):
                self._send_pieces_whole(pending, result, found)
                return
        await asyncio.get_running_loop().run_in_executor(None, service.reply, batch, result)

    def _send_pieces_whole(self, pending, output: Output, found: list[Piece]) -> None:
        error = next((p for p in found if p.error is not None), None)
        if error is not None:
            self.service.send_error(pending, error.code or 424, "HandlerError", error.error)
            return
        head = Output(code=next((p.code for p in found if p.code), output.code),
                      message=output.message)
        head.properties = dict(output.properties)
        for piece in found:
            head.properties.update(piece.properties)
        self.service.send_reply(pending, head, b"".join(p.data for p in found))

    async def _stream(self, pending, batch, generator) -> None:
        service = self.service
        request_id = pending.request.request_id
        started = False
        try:
            async for output in generator:
                if not isinstance(output, Output):
                    raise TypeError(f"the async generator yielded {type(output).__name__}; "
                                    "yield djl_python.Output objects")
                found = output_pieces(output)
                if not started:
                    if not service.untrack(batch):
                        return
                    started = True
                    properties = {k.lower(): str(v) for k, v in output.properties.items()}
                    for piece in found:
                        properties.update({k.lower(): v for k, v in piece.properties.items()})
                    code = next((p.code for p in found if p.code), int(output.code))
                    service.ipc.send(pending.identity, protocol.HandleReply(
                        request_id, code, str(output.message), properties, b"",
                        streaming=True))
                for piece in found:
                    if piece.error is not None:
                        service.ipc.send(pending.identity, protocol.StreamChunk(
                            request_id, piece.data, last=True, error=piece.error), finished=1)
                        return
                    if piece.data:
                        service.ipc.send(pending.identity,
                                         protocol.StreamChunk(request_id, piece.data))
                    if piece.last:
                        service.ipc.send(pending.identity,
                                         protocol.StreamChunk(request_id, b"", last=True),
                                         finished=1)
                        return
        except asyncio.CancelledError:
            if started or service.untrack(batch):
                service.ipc.finish(1)          # the client left mid-answer
            raise
        except BaseException as exc:  # noqa: BLE001
            if not started:
                if service.untrack(batch):
                    service.reply_exception(batch, exc)
                return
            log.error("async stream failed:\n%s", "".join(traceback.format_exception(exc)))
            service.ipc.send(pending.identity, protocol.StreamChunk(
                request_id, b"", last=True, error=f"{type(exc).__name__}: {exc}"), finished=1)
            return
        if not started:                          # an empty generator: no content
            if service.untrack(batch):
                service.send_reply(pending, Output(code=204, message="No content"), b"")
            return
        service.ipc.send(pending.identity, protocol.StreamChunk(request_id, b"", last=True),
                         finished=1)
