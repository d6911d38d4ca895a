"""The adapters API's part of /openapi.json (DJL's adapters_api.md routes, both forms)."""

from __future__ import annotations

JSON = "application/json"

_ADAPTER = {"type": "object", "required": ["name", "src", "pin"],
            "properties": {"name": {"type": "string"}, "src": {"type": "string"},
                           "preload": {"type": "boolean"}, "pin": {"type": "boolean"},
                           "options": {"type": "object",
                                       "additionalProperties": {"type": "string"}}}}
SCHEMAS = {
    "Adapter": _ADAPTER,
    "AdapterStatus": {"type": "object", "required": ["status"],
                      "properties": {"status": {"type": "string"}}},
    "AdapterList": {"type": "object", "required": ["adapters"],
                    "properties": {"adapters": {"type": "array",
                                                "items": {"$ref": "#/components/schemas/Adapter"}},
                                   "nextPageToken": {"type": "string"}}},
    "AdapterDescription": {"type": "array", "items": {"$ref": "#/components/schemas/Adapter"}},
}


def _ok(description: str, schema: str) -> dict:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _common(*codes: int) -> dict:
    known = {
        400: _error("A missing name or src, pin / preload not true or false, a bad page."),
        404: _error("The model name is not served here, or the adapter is not registered."),
        409: _error("An adapter of that name is already registered."),
        424: _error("The handler's register_adapter / update_adapter / unregister_adapter "
                    "raised or answered an error; the registry is unchanged."),
        501: _error("The native LLM engine serves no adapters yet (handlers only)."),
        503: _error("The model is loading or its worker is restarting."),
        504: _error("The worker did not answer in time."),
        507: _error("The handler ran out of memory registering the adapter."),
        500: _error("A bug in the server (never expected)."),
    }
    return {str(code): known[code] for code in codes}


def _query(name: str, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "string"}}


_MODEL = {"$ref": "#/components/parameters/ModelName"}
_ADAPTER_NAME = {"name": "adapter", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}}


def adapter_paths() -> dict:
    register = {
        "summary": "Register an adapter (DJL's adapters API)",
        "parameters": [_query("name", "the adapter's name"),
                       _query("src", "where the adapter is (a path)"),
                       _query("preload", "true (default) or false"),
                       _query("pin", "true or false (default); pinned adapters stay loaded")],
        "responses": {"200": _ok("Registered.", "AdapterStatus"),
                      **_common(400, 404, 409, 424, 501, 503, 504, 507, 500)}}
    listing = {
        "summary": "List registered adapters",
        "parameters": [_query("limit", "page size (default 100)"),
                       _query("next_page_token", "where the page starts (from the last page)")],
        "responses": {"200": _ok("One page of adapters.", "AdapterList"),
                      **_common(400, 404, 501, 503, 504, 500)}}
    describe = {"summary": "Describe an adapter", "parameters": [_ADAPTER_NAME],
                "responses": {"200": _ok("The adapter.", "AdapterDescription"),
                              **_common(404, 501, 503, 504, 500)}}
    unregister = {"summary": "Unregister an adapter", "parameters": [_ADAPTER_NAME],
                  "responses": {"200": _ok("Unregistered.", "AdapterStatus"),
                                **_common(404, 424, 501, 503, 504, 507, 500)}}
    update = {"summary": "Update an adapter (pin, preload, options)",
              "parameters": [_ADAPTER_NAME, _query("pin", "true or false"),
                             _query("preload", "true or false")],
              "responses": {"200": _ok("Updated.", "AdapterStatus"),
                            **_common(400, 404, 424, 501, 503, 504, 507, 500)}}
    paths = {}
    for prefix, extra in (("/models/{model_name}", [_MODEL]), ("", [])):
        with_model = lambda operation: {**operation, "parameters": extra + operation.get(  # noqa: E731
            "parameters", [])}
        paths[f"{prefix}/adapters"] = {"post": with_model(register), "get": with_model(listing)}
        paths[f"{prefix}/adapters/{{adapter}}"] = {"get": with_model(describe),
                                                   "delete": with_model(unregister)}
        paths[f"{prefix}/adapters/{{adapter}}/update"] = {"post": with_model(update)}
    return paths
