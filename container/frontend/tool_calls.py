"""Tool calling on /v1/chat/completions: tools into the chat template, tool_choice enforced,
and the model's text turned into OpenAI tool_calls.

- tool_choice "none": the tools are not offered; plain text.
- "auto": the model chooses; its text is parsed by option.tool_call_parser (llama3_json,
  hermes, mistral, pythonic; unset: detected from the chat template, text/tool_format.py),
  as vLLM's --tool-call-parser, incrementally (tool_stream.py):
  streamed, a call's name goes out as soon as it is written and its arguments piece by piece.
- "required" / {"type": "function", "function": {"name"}}: the grammar of structured output
  makes the model write the calls as JSON ([{"name", "arguments"}, ...] or that function's
  arguments), so the answer is a valid call whatever the model or parser.
"""

from __future__ import annotations

import json

from ..errors import bad_request
from ..workers.protocol import StructuredOutput
from .tool_stream import ToolCallStream, parse_all

PARSERS = ("llama3_json", "hermes", "mistral", "pythonic")
MARKERS = {"hermes": ("<tool_call>", "</tool_call>"), "mistral": ("[TOOL_CALLS]",),
           "llama3_json": ("<|python_tag|>",), "pythonic": ("<|python_start|>",)}


class ToolPlan:
    """What a request's tools and tool_choice mean for this generation."""

    def __init__(self, tools: list[dict] | None, tool_choice, parallel: bool,
                 parser: str | None, parser_reason: str = ""):
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
            raise bad_request('tool_choice: "auto" needs a parser for the model\'s calls and '
                              f"none was detected ({parser_reason}): set "
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

    def marker_tokens(self, tokenizer) -> dict[int, str]:
        """The parser's markers that are special tokens of this tokenizer (Mistral's
        [TOOL_CALLS], Llama's <|python_tag|>): kept in the text so the parser sees them."""
        if self.choice != "auto":
            return {}
        markers = MARKERS.get(self.parser, ())
        found = {}
        for token in tokenizer.special_ids:
            text = tokenizer.token_text(token)
            if text in markers:
                found[token] = text
        return found

    def stream(self) -> ToolCallStream:
        """The incremental parser of one sample's text (see tool_stream.py)."""
        return ToolCallStream(self.choice, self.parser, self.named, set(self.by_name),
                              self.parallel)

    def calls(self, text: str) -> tuple[str | None, list[dict]]:
        """(content left, tool calls) from the whole generated text: the streaming parser run
        over it at once, so a streamed answer reassembles to exactly this one. A call cut short
        (max_tokens) leaves the text as content and no calls."""
        if not self.active:
            return text, []
        content, calls, _ = parse_all(self.stream(), text)
        return content, calls


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates expect them: an assistant's tool_calls with their JSON
    `arguments` string as an object (templates write `arguments | tojson` or iterate it), as
    vLLM hands them over. A string that is not JSON is a 400 naming it."""
    out = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if calls is None:
            out.append(message)
            continue
        if message.get("role") != "assistant" or not isinstance(calls, list):
            raise bad_request(f"messages.{i}.tool_calls: a list, on an assistant message only")
        converted = []
        for j, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            field = f"messages.{i}.tool_calls.{j}"
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise bad_request(f'{field}: must be {{"id", "type": "function", "function": '
                                  '{"name", "arguments"}}')
            arguments = function.get("arguments", "{}")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except ValueError as exc:
                    raise bad_request(f"{field}.function.arguments: not valid JSON: {exc}") \
                        from None
            converted.append(dict(call, function=dict(function, arguments=arguments)))
        out.append(dict(message, tool_calls=converted))
    return out
