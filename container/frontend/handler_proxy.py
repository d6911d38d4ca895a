"""/invocations for handler models: the request becomes a djl_python Input on the worker."""

from __future__ import annotations

import json
import time

import gevent
from flask import Response, request

from ..errors import ServingError, bad_request
from ..workers import protocol
from .engine_client import EngineClient, WorkerGone
from .http_utils import CUSTOM_ATTRIBUTES_HEADER, engine_request_id, parse_custom_attributes

# Headers a handler may not set on the HTTP response (the server frames the body itself).
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade"}
REPLY_SLACK_S = 10.0


def build_handle_request(request_id: str, generation: int,
                         allow_handler_override: bool = False) -> protocol.HandleRequest:
    """The request as DJL's RequestParser gives it to a handler.

    Headers are properties (custom attributes added). Every query parameter is a content entry of
    its own, in order, repeated keys kept; so is every urlencoded or multipart form field (a file
    as its bytes, its content type in the property `<field>.content-type`). Any other body is the
    entry `data`. Query parameters are also properties (headers win), as earlier releases of ours
    gave them.
    """
    properties = {name: value for name, value in request.headers.items()}
    for key, value in parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER)).items():
        properties.setdefault(key, value)
    for key, value in request.args.items():
        properties.setdefault(key, value)
    _check_handler_override(properties, allow_handler_override)
    content = _pairs_in_order(request.query_string)
    adapter = request.headers.get(ADAPTER_HEADER)
    if adapter and not any(key == "adapter" for key, _ in content):
        content.append(("adapter", adapter.encode("utf-8")))   # SageMaker's way to name one
    content_type = (request.mimetype or "").lower()
    if content_type == "application/x-www-form-urlencoded":
        content.extend(_pairs_in_order(request.get_data(cache=False)))
        return protocol.HandleRequest(request_id, generation, properties, content, time.time())
    if content_type == "multipart/form-data":
        # werkzeug groups repeated multipart fields by name (first appearance order)
        for key, value in request.form.items(multi=True):
            content.append((key, value.encode("utf-8")))
        for key, upload in request.files.items(multi=True):
            content.append((key, upload.read()))
            if upload.mimetype:
                properties.setdefault(f"{key}.content-type", upload.mimetype)
        return protocol.HandleRequest(request_id, generation, properties, content, time.time())
    body = request.get_data(cache=False)
    if content_type == "application/json" and body:
        try:
            json.loads(body)
        except RecursionError:
            raise bad_request("the JSON body is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
    if body:
        content.append(("data", body))
    return protocol.HandleRequest(request_id, generation, properties, content, time.time())


def _pairs_in_order(encoded: bytes) -> list[tuple[str, bytes]]:
    """`a=1&b=2&a=3` as written: every pair in order, repeated keys kept, blanks too."""
    from urllib.parse import parse_qsl

    text = encoded.decode("utf-8", errors="replace")
    return [(k, v.encode("utf-8")) for k, v in parse_qsl(text, keep_blank_values=True)]


def _check_handler_override(properties: dict[str, str], allowed: bool) -> None:
    """DJL calls the function a request names in `handler`; here only where the operator allows."""
    named = next((v for k, v in properties.items() if k.lower() == "handler"), None)
    if named is None or allowed:
        return
    raise ServingError(400, "HandlerOverrideRefused",
                       f"handler={named!r}: a request may not choose the handler function; the "
                       f"operator can allow it with {ALLOW_HANDLER_OVERRIDE_ENV}=true")


ALLOW_HANDLER_OVERRIDE_ENV = "SERVING_ALLOW_HANDLER_OVERRIDE"
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"


def _first_reply(box, timeout: float):
    try:
        message = box.get(timeout=timeout)
    except gevent.queue.Empty:
        raise ServingError(504, "PredictTimeout",
                           f"no reply from the handler within {timeout:g}s") from None
    if isinstance(message, WorkerGone):
        raise ServingError(503, "WorkerDied", message.message, {"Retry-After": "5"})
    if isinstance(message, protocol.Rejected):
        headers = {"Retry-After": "1"} if message.code == 503 else {}
        raise ServingError(message.code, message.type, message.message, headers)
    return message


def invoke_handler(client: EngineClient, request_id: str, predict_timeout: float,
                   allow_handler_override: bool = False) -> Response:
    request_id = engine_request_id(request_id)
    generation = client.ready_generation()
    box = client.submit(build_handle_request(request_id, generation, allow_handler_override))
    try:
        reply = _first_reply(box, predict_timeout + REPLY_SLACK_S)
    except BaseException:
        client.release(request_id)
        raise
    headers = {k: v for k, v in reply.properties.items() if k.lower() not in _HOP_BY_HOP}
    if not reply.streaming:
        client.release(request_id)
        response = Response(reply.body, status=reply.code, headers=headers)
        if "content-type" not in {k.lower() for k in headers}:
            response.headers["Content-Type"] = "application/octet-stream"
        return response
    return Response(_stream(client, request_id, box, predict_timeout), status=reply.code,
                    headers=headers, direct_passthrough=True)


def _stream(client: EngineClient, request_id: str, box, idle_timeout: float):
    finished = False
    try:
        while True:
            try:
                message = box.get(timeout=idle_timeout + REPLY_SLACK_S)
            except gevent.queue.Empty:
                yield _stream_error(504, "PredictTimeout", "the stream stalled")
                return
            if isinstance(message, WorkerGone):
                yield _stream_error(503, "WorkerDied", message.message)
                return
            if message.data:
                yield message.data
            if message.error:
                yield _stream_error(424, "HandlerError", message.error)
            if message.last:
                finished = True
                return
    finally:
        if finished:
            client.release(request_id)
        else:
            client.abort(request_id)


def _stream_error(code: int, type_: str, message: str) -> bytes:
    return b"\n" + json.dumps({"code": code, "type": type_, "message": message}).encode() + b"\n"
