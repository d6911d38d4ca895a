"""SageMaker runtime routes, so `serve` is a local endpoint that boto3 calls unchanged.

boto3's `sagemaker-runtime` client with `endpoint_url=http://127.0.0.1:8080` posts
InvokeEndpoint to /endpoints/{name}/invocations and InvokeEndpointWithResponseStream to
/endpoints/{name}/invocations-response-stream. Both run exactly what /invocations runs (the
`invoke()` callable, which reads the same flask request: body, content type, custom attributes,
inference id); this module only reshapes the answer as SageMaker's runtime does:

- a container answer outside 2xx becomes SageMaker's `ModelError` (HTTP 424, with
  OriginalStatusCode / OriginalMessage), which boto3 raises as `client.exceptions.ModelError`;
- the stream route frames every chunk of the answer as a `PayloadPart` event of an AWS event
  stream, and a failure after the first byte as a `ModelStreamError` event.

Any endpoint name is accepted: a local endpoint serves one model, under whatever name the
example or notebook gives it.
"""

from __future__ import annotations

import json
import logging
import re

from flask import Response, request

from ..errors import ServingError
from . import event_stream

log = logging.getLogger(__name__)

VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
STREAM_CONTENT_TYPE_HEADER = "X-Amzn-SageMaker-Content-Type"
DEFAULT_VARIANT = "AllTraffic"
SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION_HEADER = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_SESSION_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
SESSION_CLOSED_FLAG = "X-Amzn-SageMaker-Session-Closed"
# SageMaker's endpoint-name rule.
ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# Headers of the container's answer that the outer response must not copy.
_NOT_COPIED = {"content-length", "transfer-encoding", "connection", "keep-alive",
               "x-request-id"}


def _aws_error(status: int, error_type: str, message: str, **fields) -> Response:
    """An error as rest-json AWS services send it: botocore reads the type from the header."""
    body = {"message": message, **fields}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["x-amzn-errortype"] = error_type
    return response


def _model_error(status: int, body: bytes) -> Response:
    original = body.decode("utf-8", errors="replace")
    return _aws_error(424, "ModelError",
                      f"the model container answered {status}: {original}",
                      OriginalStatusCode=status, OriginalMessage=original, LogStreamArn="")


def _call_container(invoke, name: str):
    """invoke() as the container would answer /invocations, for endpoint `name`:
    (response, None) or (None, the error SageMaker would send)."""
    if not ENDPOINT_NAME.match(name):
        return None, _aws_error(
            400, "ValidationError",
            f"endpoint name {name!r}: letters, digits and inner hyphens, at most 63")
    try:
        response = invoke()
    except ServingError as error:
        return None, _model_error(error.code, json.dumps(error.body()).encode("utf-8"))
    if not 200 <= response.status_code < 300:
        body = response.get_data()
        response.close()
        return None, _model_error(response.status_code, body)
    return response, None


def _copy_headers(source: Response, target: Response, skip: set[str]) -> None:
    for name, value in source.headers.items():
        if name.lower() not in _NOT_COPIED | skip:
            target.headers[name] = value
    target.headers[VARIANT_HEADER] = request.headers.get(TARGET_VARIANT_HEADER, DEFAULT_VARIANT)
    _session_headers(source, target)


def _session_headers(source: Response, target: Response) -> None:
    """As SageMaker's runtime answers InvokeEndpoint(SessionId=...): the container's
    `X-Amzn-SageMaker-Session-Id: <id>; Expires=...` on a new session becomes NewSessionId, and
    a closed session (the Closed-Session-Id header, or DJL's `X-Amzn-SageMaker-Session-Closed:
    true`) becomes ClosedSessionId."""
    asked = (request.headers.get(SESSION_HEADER) or "").strip()
    opened = source.headers.get(SESSION_HEADER)
    if opened and opened.split(";")[0].strip() != asked:
        target.headers[NEW_SESSION_HEADER] = opened
    if (source.headers.get(SESSION_CLOSED_FLAG, "").lower() == "true"
            and CLOSED_SESSION_HEADER not in source.headers and asked):
        target.headers[CLOSED_SESSION_HEADER] = asked


def invoke_endpoint(invoke, name: str) -> Response:
    """InvokeEndpoint: the container's whole answer, its content type and custom attributes."""
    inner, error = _call_container(invoke, name)
    if error is not None:
        return error
    try:
        body = b"".join(inner.iter_encoded())      # a streamed answer is sent whole here
    finally:
        inner.close()
    outer = Response(body, status=200)
    _copy_headers(inner, outer, skip=set())
    return outer


def _events(inner: Response):
    try:
        for chunk in inner.iter_encoded():
            for piece in event_stream.split(chunk) if chunk else ():
                yield event_stream.payload_part(piece)
    except GeneratorExit:                          # the client went away: stop the generation
        raise
    except Exception as exc:                       # the answer broke after its first byte
        log.exception("stream failed")
        yield event_stream.exception("ModelStreamError", f"the stream failed: {exc}",
                                     "ModelStreamError")
    finally:
        inner.close()                              # aborts the request if it did not finish


def invoke_endpoint_stream(invoke, name: str) -> Response:
    """InvokeEndpointWithResponseStream: each chunk of the answer as one PayloadPart event."""
    inner, error = _call_container(invoke, name)
    if error is not None:
        return error
    outer = Response(_events(inner), status=200, direct_passthrough=True)
    _copy_headers(inner, outer, skip={"content-type"})
    outer.headers["Content-Type"] = event_stream.CONTENT_TYPE
    outer.headers[STREAM_CONTENT_TYPE_HEADER] = inner.headers.get(
        "Content-Type", "application/octet-stream")
    outer.headers["X-Accel-Buffering"] = "no"
    return outer


def register_sagemaker_routes(app, invoke) -> None:
    """Add /endpoints/<name>/invocations[-response-stream]; `invoke()` answers /invocations."""
    app.add_url_rule("/endpoints/<name>/invocations", "sagemaker_invoke_endpoint",
                     lambda name: invoke_endpoint(invoke, name), methods=["POST"])
    app.add_url_rule("/endpoints/<name>/invocations-response-stream",
                     "sagemaker_invoke_endpoint_stream",
                     lambda name: invoke_endpoint_stream(invoke, name), methods=["POST"])
