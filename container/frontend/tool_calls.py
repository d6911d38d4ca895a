"""Tool calling on /v1/chat/completions: tools into the chat template, tool_choice enforced,
and the model's text turned into OpenAI tool_calls.

- tool_choice "none": the tools are not offered; plain text.
- "auto": the model chooses; its text is parsed by option.tool_call_parser (llama3_json,
  hermes, mistral, pythonic), as vLLM's --tool-call-parser.
- "required" / {"type": "function", "function": {"name"}}: the grammar of structured output
  makes the model write the calls as JSON ([{"name", "arguments"}, ...] or that function's
  arguments), so the answer is a valid call whatever the model or parser.
"""

from __future__ import annotations

import ast
import json
import re
import uuid

from ..errors import bad_request
from ..workers.protocol import StructuredOutput

PARSERS = ("llama3_json", "hermes", "mistral", "pythonic")


class ToolPlan:
    """What a request's tools and tool_choice mean for this generation."""

    def __init__(self, tools: list[dict] | None, tool_choice, parallel: bool,
                 parser: str | None):
        self.tools = [self._check(i, t) for i, t in enumerate(tools or [])]
        self.parallel = parallel
        self.parser = parser
        self.named: str | None = None
        choice = "auto" if tool_choice is None and self.tools else (tool_choice or "none")
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") != "function" or not isinstance(name, str):
                raise bad_request('tool_choice: an object must be {"type": "function", '
                                  '"function": {"name": ...}}')
            if name not in self.by_name:
                raise bad_request(f"tool_choice: no tool named {name!r} in tools")
            self.named, choice = name, "named"
        if choice not in ("none", "auto", "required", "named"):
            raise bad_request('tool_choice: must be "none", "auto", "required" or a named '
                              'function')
        if choice != "none" and not self.tools:
            raise bad_request(f"tool_choice: {choice!r} needs tools")
        if choice == "auto" and parser is None:
            raise bad_request('tool_choice: "auto" needs a parser for the model\'s calls: set '
                              f"option.tool_call_parser ({', '.join(PARSERS)}), or use "
                              '"required" or a named function')
        if parser is not None and parser not in PARSERS:
            raise bad_request(f"option.tool_call_parser={parser!r} is not one of "
                              f"{', '.join(PARSERS)}")
        self.choice = choice

    @staticmethod
    def _check(index: int, tool) -> dict:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or \
                not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f'tools.{index}: must be {{"type": "function", "function": '
                              '{"name", "parameters"}}')
        return tool

    @property
    def by_name(self) -> dict[str, dict]:
        return {t["function"]["name"]: t["function"] for t in self.tools}

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def template_tools(self) -> list[dict] | None:
        return self.tools if self.active else None

    def grammar(self) -> StructuredOutput | None:
        """The structured output that enforces "required" and named choices."""
        def parameters(function):
            return function.get("parameters") or {"type": "object"}

        if self.choice == "named":
            return StructuredOutput("json_schema", json.dumps(
                parameters(self.by_name[self.named]), sort_keys=True))
        if self.choice != "required":
            return None
        call = {"anyOf": [{"type": "object", "properties": {
            "name": {"const": name}, "arguments": parameters(f)},
            "required": ["name", "arguments"], "additionalProperties": False}
            for name, f in self.by_name.items()]}
        schema = {"type": "array", "items": call, "minItems": 1}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutput("json_schema", json.dumps(schema, sort_keys=True))

    def calls(self, text: str) -> tuple[str | None, list[dict]]:
        """(content left, tool calls) from the generated text."""
        if self.choice == "named":
            return None, [_call(self.named, _arguments(text))]
        if self.choice == "required":
            try:
                items = json.loads(text)
            except ValueError:
                return text, []              # cut short by max_tokens: leave it as text
            return None, [_call(i["name"], i.get("arguments", {})) for i in items]
        if self.choice == "auto":
            content, calls = parse(self.parser, text)
            calls = [c for c in calls if c["function"]["name"] in self.by_name]
            return (content if calls else text), (calls if self.parallel else calls[:1])
        return text, []


def _arguments(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _call(name: str, arguments) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": _arguments(arguments)}}


def _json_calls(items) -> list[dict]:
    items = items if isinstance(items, list) else [items]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            calls.append(_call(item["name"], item.get("arguments", item.get("parameters", {}))))
    return calls


def parse(parser: str, text: str) -> tuple[str | None, list[dict]]:
    """One of the model families' tool-call formats -> (content, calls)."""
    try:
        if parser == "hermes":                 # <tool_call>{"name", "arguments"}</tool_call>
            found = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S)
            calls = [c for body in found for c in _json_calls(json.loads(body))]
            content = re.sub(r"<tool_call>.*?</tool_call>", "", text, flags=re.S).strip()
            return content or None, calls
        if parser == "mistral":                # [TOOL_CALLS] [{"name", "arguments"}, ...]
            if "[TOOL_CALLS]" not in text:
                return text, []
            before, _, after = text.partition("[TOOL_CALLS]")
            return before.strip() or None, _json_calls(json.loads(after.strip()))
        if parser == "llama3_json":            # {"name", "parameters"}; several joined by ;
            stripped = text.strip().removeprefix("<|python_tag|>").strip()
            if not stripped.startswith("{"):
                return text, []
            decoder, calls, at = json.JSONDecoder(), [], 0
            while at < len(stripped):
                item, at = decoder.raw_decode(stripped, at)
                calls += _json_calls(item)
                at = len(stripped) - len(stripped[at:].lstrip().lstrip(";").lstrip())
            return None, calls
        if parser == "pythonic":               # [get_weather(city="Paris"), ...]
            stripped = text.strip()
            if not (stripped.startswith("[") and stripped.endswith("]")):
                return text, []
            tree = ast.parse(stripped, mode="eval").body
            calls = []
            for node in tree.elts:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    calls.append(_call(node.func.id, {k.arg: ast.literal_eval(k.value)
                                                      for k in node.keywords}))
            return None, calls
    except (ValueError, SyntaxError, AttributeError, TypeError):
        return text, []                         # not a well-formed call: plain text
    return text, []


def argument_deltas(call: dict, index: int, piece: int = 16):
    """Streamed tool call: the first delta names it, the next ones carry its arguments."""
    yield {"index": index, "id": call["id"], "type": "function",
           "function": {"name": call["function"]["name"], "arguments": ""}}
    arguments = call["function"]["arguments"]
    for start in range(0, len(arguments), piece):
        yield {"index": index, "function": {"arguments": arguments[start:start + piece]}}
