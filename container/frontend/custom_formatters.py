"""LMI custom formatters: a model.py beside a built-in LLM with @input_formatter /
@output_formatter functions (and no handler) reshapes requests and answers.

The front end imports that model.py once per process (so it should import little; the engine
never runs it). The input formatter gets the decoded JSON body (or, when its first argument is
named input_item, a djl_python Input) and returns the body to serve: an LMI or OpenAI body, or
a RequestInput / TextInput. The output formatter is called once per generation step with a
TextGenerationOutput and returns the text of that step; a non-streamed answer joins them.
"""

from __future__ import annotations

import inspect
import json
import logging
from functools import lru_cache
from pathlib import Path

from flask import Response, request

from ..errors import ServingError, bad_request

log = logging.getLogger(__name__)


class Formatters:
    def __init__(self, input_formatter=None, output_formatter=None):
        self.input_formatter = input_formatter
        self.output_formatter = output_formatter

    def __bool__(self) -> bool:
        return bool(self.input_formatter or self.output_formatter)


@lru_cache(maxsize=8)
def load_formatters(model_dir: str) -> Formatters:
    path = Path(model_dir) / "model.py"
    if not path.is_file():
        return Formatters()
    from djl_python.service_loader import find_decorated_function, load_model_service

    module = load_model_service(model_dir, "model.py", "-1").module
    found = Formatters(find_decorated_function(module, "is_input_formatter"),
                       find_decorated_function(module, "is_output_formatter"))
    if found:
        log.info("custom formatters from %s: input=%s output=%s", path,
                 getattr(found.input_formatter, "__name__", None),
                 getattr(found.output_formatter, "__name__", None))
    return found


def formatted_payload(formatters: Formatters, payload, tokenizer):
    """The body after the input formatter (unchanged without one)."""
    function = formatters.input_formatter
    if function is None:
        return payload
    try:
        if _wants_input(function):
            result = function(_as_input(), tokenizer=tokenizer)
        else:
            result = function(payload, tokenizer=tokenizer)
    except ServingError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: the request is what it rejected
        raise bad_request(f"the input formatter {function.__name__} refused the request: "
                          f"{type(exc).__name__}: {exc}") from None
    if isinstance(result, dict):
        return result
    if hasattr(result, "input_text"):
        return {"inputs": result.input_text, "parameters": dict(result.parameters or {})}
    raise ServingError(424, "HandlerError",
                       f"the input formatter {function.__name__} returned "
                       f"{type(result).__name__}; return a dict (the body) or a TextInput")


def _wants_input(function) -> bool:
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters:
        return False
    from djl_python import Input

    first = parameters[0]
    return first.name == "input_item" or first.annotation in (Input, "Input")


def _as_input():
    from djl_python import Input

    item = Input()
    item.properties = {k: v for k, v in request.headers.items()}
    item.content.add("data", request.get_data(cache=True))
    return item


def formatted_steps(function, prompt: str, params: dict, generation):
    """Each step's text from the output formatter, as the generation advances."""
    from djl_python.request_io import Sequence, TextGenerationOutput, TextInput, Token

    sequence = Sequence()
    output = TextGenerationOutput(request_id=0, input=TextInput(input_text=prompt,
                                                                parameters=params),
                                  sequences={0: sequence})
    for piece in generation.pieces():
        for index, token in enumerate(piece.tokens):
            text = piece.text if index == len(piece.tokens) - 1 else ""
            sequence.append(Token(token.id, text, token.log_prob, token.special))
        if generation.done:
            sequence._finished = True
            sequence.finish_reason = generation.result.finish_reason
            output.finished = True
        while sequence.has_next_token():
            yield _to_bytes(function(output))


def _to_bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def formatted_lmi(ctx, payload: dict, request_id: str, function) -> Response:
    """The LMI route with the output formatter writing the body."""
    from . import llm_routes
    from .schemas import LmiRequest, validate

    req = validate(LmiRequest, payload)
    if not isinstance(req.inputs, str):
        raise bad_request("inputs: a custom output formatter answers one input, not a list")
    params = req.parameters
    ctx.check_text(req.inputs, "inputs")
    ids = ctx.tokenizer.encode(req.inputs)
    ctx.check_length(ids, params.max_new_tokens, "inputs")
    generation = ctx.generation(request_id, ids, llm_routes._lmi_sampling(ctx, params),
                                params.stop_sequences).start()
    steps = formatted_steps(function, req.inputs,
                            payload.get("parameters") or {}, generation)
    if not req.stream:
        return Response(b"".join(steps), mimetype="application/json")
    return Response(steps, mimetype="application/jsonlines", direct_passthrough=True)
