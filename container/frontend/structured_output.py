"""Structured output fields of the OpenAI, vLLM and LMI schemas -> one StructuredOutput.

Accepted: OpenAI `response_format` ({"type": "json_object"} or {"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}), vLLM's `structured_outputs` ({"json" | "regex" |
"choice" | "grammar" | "json_object"}) and its older `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar` (EBNF), on the OpenAI routes and in LMI `parameters`.
The grammar is checked here (xgrammar parses it without the tokenizer) so that one it cannot
compile is a 400 naming the reason; the engine compiles it against the vocabulary once.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from ..errors import bad_request
from ..workers.protocol import StructuredOutput

GUIDED = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
          "guided_grammar": "ebnf"}
STRUCTURED_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice",
                   "grammar": "ebnf", "json_object": "json_object"}


def _spec(kind: str, value, field: str) -> StructuredOutput:
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise bad_request(f"{field}: not valid JSON: {exc}") from None
        if not isinstance(value, (dict, bool)):
            raise bad_request(f"{field}: must be a JSON schema (an object)")
        return StructuredOutput(kind, json.dumps(value, sort_keys=True))
    if kind == "json_object":
        return StructuredOutput(kind, "")
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(
                isinstance(c, str) and c for c in value):
            raise bad_request(f"{field}: must be a non-empty list of non-empty strings")
        return StructuredOutput(kind, json.dumps(value, ensure_ascii=False))
    if not isinstance(value, str) or not value:
        raise bad_request(f"{field}: must be a non-empty string")
    return StructuredOutput(kind, value)


def _from_response_format(value) -> StructuredOutput | None:
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object",
                                                                 "json_schema"):
        raise bad_request('response_format: type must be "text", "json_object" or "json_schema"')
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return StructuredOutput("json_object", "")
    inner = value.get("json_schema")
    if not isinstance(inner, dict) or "schema" not in inner:
        raise bad_request("response_format.json_schema: must be an object with a \"schema\"")
    return _spec("json_schema", inner["schema"], "response_format.json_schema.schema")


def structured_from(fields: dict, prefix: str = "") -> StructuredOutput | None:
    """The one structured output a request asks for (400 when it asks for several)."""
    found: list[tuple[str, StructuredOutput]] = []
    if fields.get("response_format") is not None:
        spec = _from_response_format(fields["response_format"])
        if spec:
            found.append(("response_format", spec))
    for name, kind in GUIDED.items():
        if fields.get(name) is not None:
            found.append((name, _spec(kind, fields[name], prefix + name)))
    outputs = fields.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise bad_request(f"{prefix}structured_outputs: must be an object")
        for key, kind in STRUCTURED_KEYS.items():
            value = outputs.get(key)
            if value is None or (key == "json_object" and value is False):
                continue
            found.append((f"structured_outputs.{key}",
                          _spec(kind, value, f"{prefix}structured_outputs.{key}")))
    if len(found) > 1:
        raise bad_request(f"{prefix}{found[1][0]}: only one structured output per request "
                          f"(also given: {found[0][0]})")
    if not found:
        return None
    name, spec = found[0]
    problem = grammar_problem(spec)
    if problem:
        raise bad_request(f"{prefix}{name}: {problem}")
    return spec


@lru_cache(maxsize=512)
def grammar_problem(spec: StructuredOutput) -> str | None:
    """Why xgrammar cannot build this grammar (None: it can)."""
    try:
        import xgrammar as xgr
    except ImportError:
        return "structured output needs the xgrammar package (pip install xgrammar)"
    from ..engine.structured import choice_grammar, json_schema_grammar

    try:
        if spec.kind == "json_schema":
            xgr.Grammar.from_ebnf(json_schema_grammar(spec.spec))
        elif spec.kind == "regex":
            xgr.Grammar.from_regex(spec.spec)
        elif spec.kind == "choice":
            xgr.Grammar.from_ebnf(choice_grammar(json.loads(spec.spec)))
        elif spec.kind == "ebnf":
            xgr.Grammar.from_ebnf(spec.spec)
    except Exception as error:                     # xgrammar raises several error types
        text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(error).strip().split("\n")[0])
        return f"the grammar does not compile: {text[:300] or type(error).__name__}"
    return None
