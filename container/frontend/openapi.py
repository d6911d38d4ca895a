"""The OpenAPI 3.1 document of this server, served at GET /openapi.json.

One document per server, built once from its configuration: a handler model (model.py) takes
raw bodies of any content type on /invocations, an LLM takes LMI or OpenAI JSON bodies there, so
the request bodies and statuses of the inference routes are those of the model kind served.
Request schemas come from the pydantic models in schemas.py; every operation lists each status
it can answer, with the shared error body ({"code", "type", "message"}) for errors.

Not per operation, because any path answers them (info.description says so): 404 for a path no
route matches, 405 (with an Allow header) for a method a path lacks, 400 / 414 / 431 for an
HTTP request gunicorn cannot parse or that is over its limits.
"""

from __future__ import annotations

import copy
import json

from flask import Response

from .schemas import ChatCompletionRequest, CompletionRequest, LmiRequest

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _pydantic_schemas() -> dict[str, dict]:
    """The request models of schemas.py as components (their nested models included)."""
    components: dict[str, dict] = {}
    for model in (LmiRequest, ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


# hand-written schemas: responses (schemas.py has no response models) -----------------------------
_ERROR = {
    "type": "object",
    "description": "Every error this server answers. `message` says what was wrong and, for a "
                   "bad field, names it (`parameters.temperature: must be <= 100 (got 101)`). "
                   "Handler failures (424) add DJL's `error` with the handler's own text.",
    "properties": {
        "code": {"type": "integer", "description": "the HTTP status, repeated"},
        "type": {"type": "string", "description": "a short name: BadRequest, NotFound, ..."},
        "message": {"type": "string"},
        "error": {"type": "string"},
    },
    "required": ["code", "message"],
}

_AWS_ERROR = {
    "type": "object",
    "description": "SageMaker runtime's error shape (rest-json): the type is in the "
                   "x-amzn-errortype header. A ModelError carries the container's own answer.",
    "properties": {
        "message": {"type": "string"},
        "OriginalStatusCode": {"type": "integer"},
        "OriginalMessage": {"type": "string"},
        "LogStreamArn": {"type": "string"},
    },
    "required": ["message"],
}

_HEALTHY = {"type": "object", "properties": {"status": {"const": "Healthy"}},
            "required": ["status"]}
_UNHEALTHY = {
    "type": "object",
    "properties": {"status": {"const": "Unhealthy"},
                   "state": {"type": "string", "description": "loading, restarting, ..."},
                   "message": {"type": ["string", "null"]}},
    "required": ["status"],
}

_MODEL_LIST = {
    "type": "object",
    "properties": {"models": {"type": "array", "items": {
        "type": "object",
        "properties": {"modelName": {"type": "string"}, "modelUrl": {"type": "string"},
                       "status": {"enum": ["Healthy", "Unhealthy"]}},
        "required": ["modelName", "status"]}},
        "nextPageToken": {"type": "string"}},
    "required": ["models"],
}

_MODEL_DESCRIPTION = {
    "type": "array",
    "description": "DJL's model description (one item): settings, worker state and, while the "
                   "model is ready, the engine's live figures.",
    "items": {
        "type": "object",
        "properties": {
            "modelName": {"type": "string"},
            "modelUrl": {"type": ["string", "null"]},
            "engine": {"type": "string"},
            "engineKind": {"type": "string"},
            "tensorParallelDegree": {"type": "integer"},
            "status": {"enum": ["Healthy", "Unhealthy"]},
            "workerState": {"type": "string"},
            "workerRestarts": {"type": "integer"},
            "default": {"type": "boolean"},
            "minWorkers": {"type": "integer"},
            "maxWorkers": {"type": "integer"},
            "workers": {"type": "array", "items": {
                "type": "object",
                "properties": {"id": {"type": "integer"},
                               "pid": {"type": ["integer", "null"]},
                               "status": {"type": "string"}}}},
            "engineStats": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "required": ["modelName", "status", "workers"],
    },
}

_LMI_TOKEN = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "text": {"type": "string"},
                   "log_prob": {"type": ["number", "null"]}, "special": {"type": "boolean"}},
    "required": ["id", "text"],
}

# OpenAI completions' logprobs: parallel lists, one entry per token (with echo, the prompt's
# first; its first token has null log-prob and null top_logprobs).
_COMPLETION_LOGPROBS = {
    "type": ["object", "null"],
    "properties": {
        "tokens": {"type": "array", "items": {"type": "string"}},
        "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},
        "top_logprobs": {"type": "array", "items": {
            "type": ["object", "null"], "additionalProperties": {"type": "number"}}},
        "text_offset": {"type": "array", "items": {"type": "integer"}}},
}

_CHAT_LOGPROB_ENTRY = {
    "type": "object",
    "properties": {"token": {"type": "string"}, "logprob": {"type": "number"},
                   "bytes": {"type": "array", "items": {"type": "integer"}}},
}

_CHAT_LOGPROBS = {
    "type": ["object", "null"],
    "properties": {"content": {"type": "array", "items": {"allOf": [_CHAT_LOGPROB_ENTRY, {
        "type": "object", "properties": {"top_logprobs": {
            "type": "array", "items": _CHAT_LOGPROB_ENTRY}}}]}}},
}

_TOOL_CALL = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                   "function": {"type": "object", "properties": {
                       "name": {"type": "string"},
                       "arguments": {"type": "string", "description": "JSON text"}},
                       "required": ["name", "arguments"]}},
    "required": ["id", "type", "function"],
}

_LMI_RESULT = {
    "type": "object",
    "properties": {
        "generated_text": {"type": "string"},
        "details": {
            "type": "object",
            "properties": {
                "finish_reason": {"enum": ["length", "eos_token", "stop_sequence"]},
                "generated_tokens": {"type": "integer"},
                "prompt_tokens": {"type": "integer"},
                "inputs_tokens": {"type": "integer"},
                "cached_tokens": {"type": "integer"},
                "tokens": {"type": "array", "items": _ref("LmiToken")},
                "top_tokens": {"type": "array", "description": "with top_n_tokens: each "
                               "token's most likely alternatives",
                               "items": {"type": "array", "items": _ref("LmiToken")}},
                "prefill": {"type": "array", "description": "with decoder_input_details: the "
                            "prompt's tokens (the first with log_prob null)",
                            "items": _ref("LmiToken")},
            },
        },
    },
    "required": ["generated_text"],
}

_USAGE = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"},
                   "completion_tokens": {"type": "integer"},
                   "total_tokens": {"type": "integer"}},
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}

_FINISH = {"enum": ["stop", "length", "tool_calls"]}

_CHAT_COMPLETION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"},
        "created": {"type": "integer"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "message": {"type": "object", "properties": {
                    "role": {"const": "assistant"}, "content": {"type": ["string", "null"]},
                    "tool_calls": {"type": "array", "items": _TOOL_CALL}}},
                "logprobs": _CHAT_LOGPROBS,
                "finish_reason": _FINISH},
            "required": ["index", "message", "finish_reason"]}},
        "usage": _ref("Usage"),
    },
    "required": ["id", "object", "choices", "usage"],
}

_TEXT_COMPLETION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "object": {"const": "text_completion"},
        "created": {"type": "integer"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                           "logprobs": _COMPLETION_LOGPROBS,
                           "finish_reason": _FINISH},
            "required": ["index", "text", "finish_reason"]}},
        "usage": _ref("Usage"),
    },
    "required": ["id", "object", "choices", "usage"],
}

_OPENAI_MODELS = {
    "type": "object",
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}},
        "required": ["id", "object"]}}},
    "required": ["object", "data"],
}

# For text/event-stream, OpenAPI 3.1's `schema` describes one event.
_SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "one JSON chunk; `[DONE]` ends "
                                                            "the OpenAI routes' streams"}},
    "required": ["data"],
}

_LLM_INVOCATION = {
    "description": "Which schema applies is decided by the keys present: a body with `messages` "
                   "is an OpenAI chat completion; else one with `prompt` and no `inputs` an "
                   "OpenAI completion; anything else is LMI's `{\"inputs\", \"parameters\", "
                   "\"stream\"}`.",
    "oneOf": [
        _ref("ChatCompletionRequest"),
        {"allOf": [_ref("CompletionRequest"),
                   {"not": {"anyOf": [{"required": ["messages"]}, {"required": ["inputs"]}]}}]},
        {"allOf": [_ref("LmiRequest"), {"not": {"required": ["messages"]}}]},
    ],
}


def _error(description: str, headers: dict | None = None, schema: str = "Error") -> dict:
    response = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "string"}}}

RESPONSES = {
    "BadRequest": _error("The body is not valid JSON, not a JSON object where one is needed, or a "
                         "field is out of range (the message names the field and what is "
                         "allowed), or the prompt plus the new tokens exceed the model's "
                         "max_model_len."),
    "ModelNotFound": _error("The model name is not the one this server serves."),
    "NotAnLlm": _error("This route serves LLM engines; the model here is a custom handler."),
    "PayloadTooLarge": _error("The body is over max_request_size (SAGEMAKER_MAX_PAYLOAD_IN_MB)."),
    "HandlerError": _error("The handler raised, returned Output.error(...), or answered a batch "
                           "with the wrong number of items."),
    "InternalError": _error("A bug in the server (never expected); the message names the "
                            "request id to find in the log."),
    "ServiceUnavailable": _error("The model is loading or its worker is restarting, the job queue "
                                 "is full (job_queue_size), or the worker died while holding the "
                                 "request.", _RETRY_AFTER),
    "PredictTimeout": _error("A handler call ran past predict_timeout; the worker is restarted."),
    "OutOfMemory": _error("The handler ran out of memory (MemoryError, CUDA OOM)."),
    "HeadersTooLarge": _error("Over 100 headers, or a header line over 8190 bytes."),
}


def _responses(*names_by_code: tuple[int, str]) -> dict:
    return {str(code): {"$ref": f"#/components/responses/{name}"} for code, name in names_by_code}


# parameters ---------------------------------------------------------------------------------------
def _parameters(model_name: str) -> dict:
    return {
        "ModelName": {"name": "model_name", "in": "path", "required": True,
                      "description": "a served model's name (the default one listed; models "
                                     "registered at run time too; any other answers 404)",
                      "schema": {"type": "string", "enum": [model_name]}},
        "ModelVersion": {"name": "model_version", "in": "path", "required": True,
                         "description": "accepted and ignored (one version is served)",
                         "schema": {"type": "string", "minLength": 1}},
        "EndpointName": {"name": "endpoint_name", "in": "path", "required": True,
                         "description": "any SageMaker endpoint name (the local endpoint serves "
                                        "its one model under every name); a name outside this "
                                        "pattern answers 400 ValidationError",
                         "schema": {"type": "string",
                                    "pattern": "^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"}},
        "CustomAttributes": {
            "name": "X-Amzn-SageMaker-Custom-Attributes", "in": "header", "required": False,
            "description": "`a=1; b=two`: handlers see each item as an Input property (an item "
                           "without `=` is \"true\"); the LLM engine ignores them",
            "schema": {"type": "string"}},
        "InferenceId": {
            "name": "X-Amzn-SageMaker-Inference-Id", "in": "header", "required": False,
            "description": "the request's id, echoed in the answer (a new one when absent)",
            "schema": {"type": "string"}},
        "TargetVariant": {
            "name": "X-Amzn-SageMaker-Target-Variant", "in": "header", "required": False,
            "description": "echoed as x-Amzn-Invoked-Production-Variant (default AllTraffic)",
            "schema": {"type": "string"}},
    }


def _params(*names: str) -> list[dict]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


# operations ---------------------------------------------------------------------------------------
def _invocation_operation(llm: bool, summary: str, extra_params: tuple[str, ...] = (),
                          not_found: bool = False) -> dict:
    if llm:
        body = {"required": True, "description": "LMI or OpenAI JSON (see the schema's "
                                                  "description for which applies).",
                "content": {JSON: {"schema": _ref("LlmInvocation")}}}
        ok = {"description": "Non-streamed: LMI's {\"generated_text\", \"details\"} (a list for "
                             "a list of inputs), or an OpenAI chat.completion / text_completion. "
                             "Streamed (`\"stream\": true`): JSON lines, or server-sent events "
                             "with option.output_formatter=sse; an error after the first line "
                             "arrives as a last line with the error body.",
              "headers": {"X-Prompt-Tokens": {"schema": {"type": "string"}},
                          "X-Generated-Tokens": {"schema": {"type": "string"}}},
              "content": {JSON: {"schema": {"anyOf": [
                  _ref("LmiResult"), {"type": "array", "items": _ref("LmiResult")},
                  _ref("ChatCompletion"), _ref("TextCompletion")]}},
                  "application/jsonlines": {"schema": {"type": "string"}},
                  "text/event-stream": {"schema": _SSE_EVENT}}}
        codes = [(400, "BadRequest"), (413, "PayloadTooLarge"), (500, "InternalError"),
                 (503, "ServiceUnavailable")]
    else:
        body = {"required": False,
                "description": "Any body of any content type reaches the handler as "
                               "Input content (`data`); multipart/form-data arrives as one item "
                               "per field. An application/json body must be valid JSON. Headers "
                               "and query parameters become Input properties.",
                "content": {JSON: {"schema": {}},
                            "text/plain": {"schema": {"type": "string"}},
                            "application/octet-stream": {"schema": {"type": "string",
                                                                    "format": "binary"}},
                            "*/*": {"schema": {}}}}
        ok = {"description": "The handler's answer: its body, content type and properties as "
                             "headers (a handler may also choose another status with "
                             "Output.set_code / Output.error). A streaming Output is sent "
                             "chunked; an error after the first chunk is a last line with the "
                             "error body.",
              "content": {"*/*": {"schema": {}}}}
        codes = [(400, "BadRequest"), (413, "PayloadTooLarge"), (424, "HandlerError"),
                 (500, "InternalError"), (503, "ServiceUnavailable"), (504, "PredictTimeout"),
                 (507, "OutOfMemory")]
    if not_found:
        codes.append((404, "ModelNotFound"))
    params = ("InferenceId",) + (() if llm else ("CustomAttributes",))
    codes.append((431, "HeadersTooLarge"))
    return {"summary": summary,
            "parameters": _params(*extra_params, *params),
            "requestBody": body,
            "responses": {"200": ok, **_responses(*sorted(codes))}}


def _openai_operation(llm: bool, summary: str, request: str, result: str) -> dict:
    if not llm:
        return {"summary": summary + " (this server serves a handler: always 404)",
                "requestBody": {"required": False,
                                "content": {JSON: {"schema": _ref(request)}}},
                "responses": _responses((404, "NotAnLlm"), (500, "InternalError"),
                                        (503, "ServiceUnavailable"))}
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {
            "200": {"description": "The completion; with `\"stream\": true` server-sent events "
                                   "of chunks, ending with `data: [DONE]`.",
                    "content": {JSON: {"schema": _ref(result)},
                                "text/event-stream": {"schema": _SSE_EVENT}}},
            **_responses((400, "BadRequest"), (413, "PayloadTooLarge"), (500, "InternalError"),
                         (503, "ServiceUnavailable"))},
    }


def _sagemaker_operation(llm: bool, stream: bool) -> dict:
    inner = _invocation_operation(llm, "")
    if stream:
        ok = {"description": "An AWS event stream: each chunk of the container's answer as a "
                             "PayloadPart event; a failure after the first byte as a "
                             "ModelStreamError event. X-Amzn-SageMaker-Content-Type is the "
                             "answer's own content type.",
              "content": {"application/vnd.amazon.eventstream": {
                  "schema": {"type": "string", "format": "binary"}}}}
        summary = "SageMaker InvokeEndpointWithResponseStream"
    else:
        ok = dict(inner["responses"]["200"], description="The container's whole answer (as "
                                                          "/invocations answers it).")
        summary = "SageMaker InvokeEndpoint"
    aws = {"description": "", "content": {JSON: {"schema": _ref("AwsError")}},
           "headers": {"x-amzn-errortype": {"schema": {"type": "string"}}}}
    return {
        "summary": summary,
        "description": "The same request as /invocations; the answer reshaped as SageMaker's "
                       "runtime sends it.",
        "parameters": _params("EndpointName", "TargetVariant", *(
            p["$ref"].rsplit("/", 1)[1] for p in inner["parameters"])),
        "requestBody": inner["requestBody"],
        "responses": {
            "200": ok,
            "400": dict(aws, description="ValidationError: the endpoint name is not a SageMaker "
                                         "endpoint name."),
            **_responses((413, "PayloadTooLarge"), (431, "HeadersTooLarge")),
            "424": dict(aws, description="ModelError: the container answered outside 2xx "
                                         "(OriginalStatusCode, OriginalMessage); a 503 while "
                                         "loading arrives this way too."),
            **_responses((500, "InternalError")),
        },
    }


def build_openapi(config) -> dict:
    """The whole document for this server's configuration (a ServingConfig)."""
    llm = config.engine_kind != "handler"
    kind = ("an LLM (engine kind " + config.engine_kind + "): /invocations takes LMI or OpenAI "
            "JSON" if llm else "a custom handler (model.py): /invocations takes raw bodies of "
            "any content type")
    schemas = _pydantic_schemas()
    schemas.update({
        "Error": _ERROR, "AwsError": _AWS_ERROR, "Healthy": _HEALTHY, "Unhealthy": _UNHEALTHY,
        "ModelList": _MODEL_LIST, "ModelDescription": _MODEL_DESCRIPTION,
        "LmiToken": _LMI_TOKEN, "LmiResult": _LMI_RESULT, "Usage": _USAGE,
        "ChatCompletion": _CHAT_COMPLETION, "TextCompletion": _TEXT_COMPLETION,
        "OpenAIModelList": _OPENAI_MODELS, "LlmInvocation": _LLM_INVOCATION,
    })
    json_ok = lambda description, schema: {  # noqa: E731
        "description": description, "content": {JSON: {"schema": _ref(schema)}}}
    paths = {
        "/ping": {"get": {
            "summary": "Health (SageMaker's)",
            "responses": {
                "200": json_ok("The model is loaded and its worker is up.", "Healthy"),
                "503": {"description": "Loading, or a dead worker is restarting.",
                        "content": {JSON: {"schema": _ref("Unhealthy")}}},
                **_responses((500, "InternalError"))}}},
        "/invocations": {"post": _invocation_operation(llm, "Inference (SageMaker's)")},
        "/predictions/{model_name}": {"post": _invocation_operation(
            llm, "Inference (DJL's route)", ("ModelName",), not_found=True)},
        "/predictions/{model_name}/{model_version}": {"post": _invocation_operation(
            llm, "Inference (DJL's route, a version)", ("ModelName", "ModelVersion"),
            not_found=True)},
        "/models": {"get": {
            "summary": "DJL's model list (paged: limit, next_page_token)",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "string"}},
                           {"name": "next_page_token", "in": "query", "required": False,
                            "schema": {"type": "string"}}],
            "responses": {"200": json_ok("The served models, default first.", "ModelList"),
                          "400": {"$ref": "#/components/responses/BadRequest"},
                          **_responses((500, "InternalError"))}}},
        "/models/{model_name}": {"get": {
            "summary": "DJL's model description",
            "parameters": _params("ModelName"),
            "responses": {"200": json_ok("Settings, workers and live engine figures.",
                                         "ModelDescription"),
                          **_responses((404, "ModelNotFound"), (500, "InternalError"))}}},
        "/v1/completions": {"post": _openai_operation(
            llm, "OpenAI completions", "CompletionRequest", "TextCompletion")},
        "/v1/chat/completions": {"post": _openai_operation(
            llm, "OpenAI chat completions", "ChatCompletionRequest", "ChatCompletion")},
        "/v1/models": {"get": {
            "summary": "OpenAI model list",
            "responses": {"200": json_ok("The served model.", "OpenAIModelList"),
                          **_responses((500, "InternalError"))}}},
        "/endpoints/{endpoint_name}/invocations": {"post": _sagemaker_operation(llm, False)},
        "/endpoints/{endpoint_name}/invocations-response-stream": {
            "post": _sagemaker_operation(llm, True)},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus' text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_responses((500, "InternalError"))}}},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {JSON: {"schema": {"type": "object"}}}},
                          **_responses((500, "InternalError"))}}},
    }
    from .openapi_adapters import SCHEMAS as ADAPTER_SCHEMAS, adapter_paths

    from .openapi_management import SCHEMAS as MANAGEMENT_SCHEMAS, management_operations

    paths.update(adapter_paths())
    schemas.update(ADAPTER_SCHEMAS)
    schemas.update(MANAGEMENT_SCHEMAS)
    for path, operations in management_operations().items():
        paths[path].update(operations)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serve",
            "version": "1",
            "description": f"SageMaker / DJL Serving compatible inference server. This server "
                           f"serves {config.model_name!r}, {kind}. Any path answers 404 when no "
                           f"route matches, 405 (with Allow) for a method the path lacks, 400 "
                           f"for a malformed HTTP request, 414 for a request line over 8190 "
                           f"bytes and 431 for headers over the limits, all with the Error "
                           f"body. JSON fields are read leniently (pydantic's lax mode): a "
                           f"number written as a string (\"5\"), or a boolean where a number "
                           f"is expected, is converted; the schemas give the types to send.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "responses": copy.deepcopy(RESPONSES),
                       "parameters": _parameters(config.model_name)},
    }


def register_openapi_route(app, config) -> None:
    """GET /openapi.json: the document, built once."""
    document = json.dumps(build_openapi(config), indent=1)

    def openapi_json():
        return Response(document, mimetype=JSON)

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
