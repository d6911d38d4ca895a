"""Which tool-call format a model writes, read from its chat template.

A template that offers tools also shows the model how its calls look: Hermes and Qwen wrap
them in <tool_call> tags, Mistral starts them with [TOOL_CALLS], Llama 3.x asks for a JSON
object with "parameters" (and has <|python_tag|>), Llama 3.2's pythonic and Llama 4's
templates ask for [func_name1(...)] or use <|python_start|>. option.tool_call_parser, when
set, wins; otherwise these signs pick the parser, in this order (the first format seen).
"""

from __future__ import annotations

# (parser, what in the template shows it), the more specific formats first: a Llama 3.1
# template that also mentions <|python_tag|> for built-in tools still writes JSON calls
SIGNS = (
    ("hermes", ("<tool_call>",)),
    ("mistral", ("[TOOL_CALLS]",)),
    ("pythonic", ("<|python_start|>", "[func_name1(")),
    ("llama3_json", ('"parameters": dictionary of argument name', "<|python_tag|>")),
)


def detect_tool_parser(templates: list[str]) -> tuple[str | None, str]:
    """(parser or None, why): the format the chat templates show, with the sign found."""
    for parser, signs in SIGNS:
        for sign in signs:
            if any(sign in template for template in templates):
                return parser, f"the chat template contains {sign!r}"
    return None, "the chat template shows none of the known formats"


def tool_parser_for(option: str | None, templates: list[str]) -> tuple[str | None, str]:
    """The parser for tool_choice "auto": the option when set, else the detected one."""
    if option:
        return option, "option.tool_call_parser"
    if not any(templates):
        return None, "the model has no chat template"
    return detect_tool_parser(templates)
