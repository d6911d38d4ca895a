"""Request ids, SageMaker headers and JSON error responses shared by every route."""

from __future__ import annotations

import json
import uuid

from flask import Response, request

from ..errors import ServingError

INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def request_id() -> str:
    """The caller's id (SageMaker inference id or x-request-id), else a new one."""
    return (request.headers.get(INFERENCE_ID_HEADER) or request.headers.get("X-Request-Id")
            or uuid.uuid4().hex)


def engine_request_id(request_id: str) -> str:
    """The id a request carries between the front end and the worker: the caller's id (for the
    logs) plus a random part, so two requests sent with the same X-Request-Id never share one."""
    return f"{request_id}.{uuid.uuid4().hex[:12]}"


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """`a=1; b=two` -> {"a": "1", "b": "two"}; items without '=' map to "true"."""
    attributes: dict[str, str] = {}
    if not header:
        return attributes
    for item in header.split(";"):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key:
            attributes[key] = value.strip() if sep else "true"
    return attributes


def error_response(error: ServingError) -> Response:
    response = Response(json.dumps(error.body()), status=error.code, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def json_response(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False), status=status,
                    mimetype="application/json")
