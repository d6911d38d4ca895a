"""The management API's part of /openapi.json: registering, scaling and removing models."""

from __future__ import annotations

from .openapi_adapters import _common, _ok, _query

SCHEMAS = {
    "ManagementStatus": {"type": "object", "required": ["status"],
                         "properties": {"status": {"type": "string"}}},
}

_NAME = {"$ref": "#/components/parameters/ModelName"}


def management_operations() -> dict:
    """Operations to add beside GET /models and GET /models/{model_name}."""
    register = {
        "summary": "Register a model (DJL's management API)",
        "parameters": [
            _query("url", "a local model directory, an s3:// prefix or model.tar.gz"),
            _query("model_name", "its name (default: the url's last part)"),
            _query("batch_size", "dynamic batch size for a handler model"),
            _query("max_batch_delay", "ms to wait for a batch"),
            _query("job_queue_size", "requests held before 503"),
            _query("synchronous", "true (default): answer once loaded; false: 202 at once")],
        "responses": {"200": _ok("Registered and loaded.", "ManagementStatus"),
                      "202": _ok("Registration scheduled (synchronous=false).",
                                 "ManagementStatus"),
                      **_common(400, 409, 500, 504)}}
    scale = {"summary": "Set a model's workers (one worker group per model)",
             "parameters": [_query("min_worker", "must be 1"),
                            _query("max_worker", "1 or more (recorded)")],
             "responses": {"200": _ok("Recorded.", "ManagementStatus"),
                           **_common(400, 404, 500, 504)}}
    remove = {"summary": "Unregister a model (not the default one)",
              "responses": {"200": _ok("Unregistered; its workers stopped.", "ManagementStatus"),
                            **_common(400, 404, 500, 504)}}
    return {"/models": {"post": register},
            "/models/{model_name}": {"put": {**scale, "parameters": [_NAME] + scale["parameters"]},
                                     "delete": {**remove, "parameters": [_NAME]}}}
