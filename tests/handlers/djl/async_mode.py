"""option.async_mode=true: a coroutine per request; an Output, None, or an async generator."""

import asyncio
import json
import os
import time

from djl_python import Input, Output


async def _pieces(count: int, delay: float, marker: str | None):
    try:
        for index in range(count):
            await asyncio.sleep(delay)
            yield Output().add(f"piece-{index};").add_property("content-type", "text/plain")
    except asyncio.CancelledError:
        if marker:
            with open(marker, "w") as f:
                f.write("cancelled")
        raise


async def _binary_pieces(count: int):
    for index in range(count):
        await asyncio.sleep(0.01)
        yield Output().add(Output.binary_encode({"data": f"<{index}>",
                                                 "last": index == count - 1}))
    yield Output().add(Output.binary_encode({"data": "after the last piece", "last": True}))


async def handle(inputs: Input, cl_socket):
    if inputs.is_empty():
        return None
    request = inputs.get_as_json()
    action = request.get("action")
    if action == "sleep":
        started = time.time()
        await asyncio.sleep(float(request["seconds"]))
        return Output().add_as_json({"started": started, "ended": time.time(),
                                     "pid": os.getpid()})
    if action == "stream":
        return _pieces(int(request["count"]), float(request.get("delay", 0.05)),
                       request.get("marker"))
    if action == "binary":
        # DJL's async-mode answer: the piece as a binary-encoded map of data and last
        answer = Output().add(Output.binary_encode(
            {"data": json.dumps({"echo": request["text"]}), "last": True}))
        return answer.add_property("content-type", "application/json")
    if action == "binary_stream":
        return _binary_pieces(int(request["count"]))
    if action == "none":
        return None
    if action == "fail":
        raise ValueError("asked to fail")
    return Output().error(f"unknown action {action!r}", code=400)
