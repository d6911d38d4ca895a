"""Tool calling end to end, one real `serve` per parser format, driven by the `openai` client.

Each format gets a tiny random-weight model whose chat template offers the tools, writes an
assistant's calls in that format and renders `tool` messages. For tool_choice "required" and a
named function the grammar makes even random weights write a valid call; for "auto" a
guided_regex makes the model write the format's own text, so the server's incremental parser
reads real tokens. Checked each time: the streamed deltas (name first, then arguments in
pieces, live) reassemble to exactly the non-streamed tool_calls; ids unique; arguments valid
JSON that jsonschema accepts; finish_reason "tool_calls"; then the tool's answer goes back in
the history and the prompt the server counted is the one transformers renders from the same
template. The parser's own contract (any split of the text gives the same answer) is checked
without a server.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from conftest import ServeProcess
from tiny_models import build_model

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                            "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
                                              "maximum": 14}},
    "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

def _head(how: str = "") -> str:
    """The system turn that offers the tools; `how` tells the model its call format, in the
    words real templates use (the server detects the parser from them)."""
    return ("{%- if tools %}<|system|>You may call these tools: {% for t in tools %}"
            "{{ t.function.name }} {{ t.function.parameters | tojson }}; {% endfor %}" + how +
            "<|end|>{% endif %}{%- for m in messages %}")



_TAIL = ("{%- endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
_PLAIN = "{%- else %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endif %}"
TEMPLATES = {
    "hermes": _head() + (
        "{%- if m.role == 'assistant' and m.tool_calls is defined %}<|assistant|>"
        "{{ m.content }}{% for c in m.tool_calls %}<tool_call>{\"name\": "
        "{{ c.function.name | tojson }}, \"arguments\": {{ c.function.arguments | tojson }}}"
        "</tool_call>{% endfor %}<|end|>"
        "{%- elif m.role == 'tool' %}<|user|><tool_response>{{ m.content }}</tool_response>"
        "<|end|>") + _PLAIN + _TAIL,
    "mistral": _head() + (
        "{%- if m.role == 'assistant' and m.tool_calls is defined %}<|assistant|>"
        "[TOOL_CALLS] [{% for c in m.tool_calls %}{\"name\": {{ c.function.name | tojson }}, "
        "\"arguments\": {{ c.function.arguments | tojson }}, \"id\": {{ c.id | tojson }}}"
        "{{ ', ' if not loop.last }}{% endfor %}]<|end|>"
        "{%- elif m.role == 'tool' %}<|user|>[TOOL_RESULTS] {\"call_id\": "
        "{{ m.tool_call_id | tojson }}, \"content\": {{ m.content | tojson }}}"
        "[/TOOL_RESULTS]<|end|>") + _PLAIN + _TAIL,
    "llama3_json": _head('Respond in the format {"name": function name, "parameters": '
                         'dictionary of argument name and its value}.') + (
        "{%- if m.role == 'assistant' and m.tool_calls is defined %}<|assistant|>"
        "{% for c in m.tool_calls %}{\"name\": {{ c.function.name | tojson }}, \"parameters\": "
        "{{ c.function.arguments | tojson }}}{{ '; ' if not loop.last }}{% endfor %}<|end|>"
        "{%- elif m.role == 'tool' %}<|user|>ipython: {{ m.content }}<|end|>")
        + _PLAIN + _TAIL,
    "pythonic": _head("Write calls as [func_name1(params_name1=params_value1), "
                      "func_name2(params)].") + (
        "{%- if m.role == 'assistant' and m.tool_calls is defined %}<|assistant|>["
        "{% for c in m.tool_calls %}{{ c.function.name }}("
        "{% for k, v in c.function.arguments.items() %}{{ k }}={{ v | tojson }}"
        "{{ ', ' if not loop.last }}{% endfor %}){{ ', ' if not loop.last }}{% endfor %}]<|end|>"
        "{%- elif m.role == 'tool' %}<|user|>result: {{ m.content }}<|end|>") + _PLAIN + _TAIL,
}
# what "auto" is made to write, in each format's own text (the parser reads it back)
_ARGS = r'\{"city": "[a-z]{1,8}", "unit": "(c|f)"\}'
AUTO_REGEX = {
    "hermes": r'[a-z]{1,6}\. <tool_call>\{"name": "get_weather", "arguments": ' + _ARGS +
              r'\}</tool_call>\n<tool_call>\{"name": "get_time", "arguments": \{"zone": '
              r'-?[1-9]\}\}</tool_call>',
    "mistral": r'[a-z]{1,6} \[TOOL_CALLS\] \[\{"name": "get_weather", "arguments": ' + _ARGS +
               r'\}\]',
    "llama3_json": r'\{"name": "get_weather", "parameters": ' + _ARGS + r'\}; \{"name": '
                   r'"get_time", "parameters": \{"zone": [1-9]\}\}',
    "pythonic": r'\[get_weather\(city="[a-z]{1,8}", unit="(c|f)"\)\]',
}
AUTO_CALLS = {"hermes": 2, "mistral": 1, "llama3_json": 2, "pythonic": 1}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tools") / "base", "llama")


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def served(request, base_model, tmp_path_factory):
    """(parser, server, model dir): one server per format, one at a time."""
    parser = request.param
    directory = tmp_path_factory.mktemp("tools") / parser
    shutil.copytree(base_model, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATES[parser]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    # no option.tool_call_parser: the server reads the format from the chat template
    (directory / "serving.properties").write_text(
        "option.num_kv_blocks=128\noption.kv_block_size=16\noption.max_rolling_batch_size=4\n")
    process = ServeProcess(directory).start()
    assert f"tool calls (tool_choice=auto): {parser} parser (the chat template" in process.log
    yield parser, process, directory
    process.stop()


def client_of(server):
    return openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0,
                         timeout=120)


def ask(client, stream: bool, **body):
    """(content, [(id, name, arguments)], finish_reason, tool-call chunks) of one sample; a
    streamed answer is reassembled from its deltas, checking their OpenAI shape."""
    if not stream:
        choice = client.chat.completions.create(model="m", **body).choices[0]
        calls = [(c.id, c.function.name, c.function.arguments)
                 for c in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason, 0
    content, calls, finish, chunks = "", {}, None, 0
    for chunk in client.chat.completions.create(model="m", stream=True, **body):
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            if delta.tool_calls:
                chunks += 1
            for part in delta.tool_calls or []:
                if part.index not in calls:       # the first delta of a call names it
                    assert part.id and part.type == "function" and part.function.name, part
                    assert part.function.arguments == "", part
                    calls[part.index] = [part.id, part.function.name, ""]
                else:
                    assert part.id is None and part.function.name is None, part
                    calls[part.index][2] += part.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    assert sorted(calls) == list(range(len(calls)))
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish, chunks


def check_calls(calls, named: str | None = None):
    assert calls
    assert len({c[0] for c in calls}) == len(calls), calls          # unique ids
    for call_id, name, arguments in calls:
        assert call_id.startswith("call_")
        assert name in SCHEMAS and (named is None or name == named)
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def rendered_length(directory, messages, tools) -> int:
    """The prompt's token count as transformers renders the same template (arguments as
    objects, as the server hands them to templates)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    for message in messages:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                         tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


CHOICES = [("required", "required", {}), ("named", {"type": "function", "function": {
    "name": "get_time"}}, {}), ("auto", "auto", None)]


def test_round_trip(served):
    parser, server, directory = served
    client = client_of(server)
    question = [{"role": "user", "content": "what is the weather in oslo?"}]
    for label, tool_choice, extra in CHOICES:
        extra = {"guided_regex": AUTO_REGEX[parser]} if extra is None else extra
        body = dict(messages=question, tools=TOOLS, tool_choice=tool_choice, max_tokens=160,
                    temperature=1.0, seed=7, parallel_tool_calls=label != "required",
                    extra_body=extra)
        content, calls, finish, _ = ask(client, False, **body)
        s_content, s_calls, s_finish, chunks = ask(client, True, **body)
        assert finish == s_finish == "tool_calls", (label, content, calls)
        check_calls(calls, "get_time" if label == "named" else None)
        check_calls(s_calls, "get_time" if label == "named" else None)
        # the stream is the same answer, sent live: several tool-call chunks, not one blob
        assert [c[1:] for c in s_calls] == [c[1:] for c in calls], (label, s_calls, calls)
        assert s_content == content, (label, s_content, content)
        assert chunks > len(calls), (label, chunks)
        if label == "auto":
            assert len(calls) == AUTO_CALLS[parser], calls
            assert (content is not None) == (parser in ("hermes", "mistral")), content
        # the tool's answer goes back: call -> tool message -> answer
        history = question + [
            {"role": "assistant", "content": content, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls]}] + [
            {"role": "tool", "tool_call_id": i, "content": f"result of {n}: 21 degrees"}
            for i, n, _ in calls]
        for stream in (False, True):
            answer = dict(messages=history, tools=TOOLS, max_tokens=8, temperature=0,
                          stream=stream)
            if stream:
                answer["stream_options"] = {"include_usage": True}
                usage = [c.usage for c in client.chat.completions.create(model="m", **answer)
                         if c.usage][0]
            else:
                reply = client.chat.completions.create(model="m", **answer)
                assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
                usage = reply.usage
            expected = rendered_length(directory, json.loads(json.dumps(history)), TOOLS)
            assert usage.prompt_tokens == expected, (label, usage, expected)


def test_auto_without_a_call_streams_the_same_content(served):
    parser, server, _ = served
    client = client_of(server)
    body = dict(messages=[{"role": "user", "content": "hello"}], tools=TOOLS, max_tokens=12,
                temperature=0)
    content, calls, finish, _ = ask(client, False, **body)
    s_content, s_calls, s_finish, _ = ask(client, True, **body)
    assert (s_content, s_calls, s_finish) == (content, calls, finish)
    if not calls:
        assert finish in ("stop", "length")


def test_bad_tool_history_is_a_400_naming_the_field(served):
    _, server, _ = served
    client = client_of(server)
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time",
                                                          "arguments": "{not json"}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=bad, tools=TOOLS, max_tokens=2)
    assert "messages.1.tool_calls.0.function.arguments" in str(caught.value)


# the incremental parser alone ------------------------------------------------------------------
PARSER_CASES = [
    ("hermes", 'Sure.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": 2}}\n'
               '</tool_call>\n<tool_call>{"arguments": {"city": "Oslo", "unit": "c"}, '
               '"name": "get_weather"}</tool_call>\n',
     "Sure.", [("get_time", {"zone": 2}), ("get_weather", {"city": "Oslo", "unit": "c"})]),
    ("hermes", "a <tool_ b <tool_call> not json", "a <tool_ b <tool_call> not json", []),
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {"zone": 1}}; '
                    '{"name": "get_weather", "parameters": {"city": "O{s}lo\\"", "unit": "c"}}',
     None, [("get_time", {"zone": 1}), ("get_weather", {"city": 'O{s}lo"', "unit": "c"})]),
    ("llama3_json", ' {"answer": 1}', ' {"answer": 1}', []),
    ("llama3_json", "hello {", "hello {", []),
    ("mistral", 'x [TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": 3}}, '
                '{"name": "get_weather", "arguments": {"city": "a]}", "unit": "f"}}]', "x",
     [("get_time", {"zone": 3}), ("get_weather", {"city": "a]}", "unit": "f"})]),
    ("mistral", '[TOOL_CALLS]{"name": "get_time", "arguments": {"zone": -3}}', None,
     [("get_time", {"zone": -3})]),
    ("pythonic", "[get_weather(city='Rome', unit=\"f\"), get_time(zone=-1)]", None,
     [("get_weather", {"city": "Rome", "unit": "f"}), ("get_time", {"zone": -1})]),
    ("pythonic", "[get_time(", "[get_time(", []),
    ("pythonic", "plain [text]", "plain [text]", []),
]


def _replay(stream, text: str, rng: random.Random) -> list[dict]:
    deltas, at = [], 0
    while at < len(text):
        size = rng.randint(1, 5)
        deltas += stream.feed(text[at:at + size])
        at += size
    return deltas + stream.finish()


@pytest.mark.parametrize("parser, text, content, calls", PARSER_CASES)
def test_incremental_parser_any_split_gives_the_whole_answer(parser, text, content, calls):
    from container.frontend.tool_calls import ToolPlan

    plan = ToolPlan(TOOLS, "auto", True, parser)
    got_content, got_calls = plan.calls(text)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] \
        == calls
    for seed in range(25):
        stream = plan.stream()
        deltas = _replay(stream, text, random.Random(seed))
        streamed_content = "".join(d.get("content", "") for d in deltas)
        found: dict[int, list] = {}
        for delta in deltas:
            for part in delta.get("tool_calls", []):
                if "id" in part:
                    found[part["index"]] = [part["function"]["name"], ""]
                else:
                    found[part["index"]][1] += part["function"]["arguments"]
        if calls:
            assert streamed_content == (content or "")
            assert [(n, a) for n, a in found.values()] == \
                [(c["function"]["name"], c["function"]["arguments"]) for c in got_calls]
        elif found:          # a call cut short: announced already, but never complete
            assert not stream.complete
        else:
            assert streamed_content == text


def test_required_and_named_stream_their_grammar_output():
    from container.frontend.tool_stream import ToolCallStream

    stream = ToolCallStream("required")
    deltas = _replay(stream, '[{"name": "get_time", "arguments": {"zone": 4}}, '
                             '{"name": "get_weather", "arguments": {}}]', random.Random(0))
    assert stream.complete and [c["function"]["arguments"] for c in stream.calls] == \
        ['{"zone": 4}', "{}"]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == "get_time"
    stream = ToolCallStream("named", named="get_time")
    first = stream.feed('{"zo')
    assert first[0]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": ""}
    assert first[1]["tool_calls"][0]["function"]["arguments"] == '{"zo'
    stream.feed('ne": 1}')
    stream.finish()
    assert stream.complete and stream.calls[0]["function"]["arguments"] == '{"zone": 1}'
    cut = ToolCallStream("required")
    _replay(cut, '[{"name": "get_time", "argum', random.Random(1))
    assert not cut.complete


def test_a_marker_that_is_a_special_token_reaches_the_parser(base_model):
    """Mistral's [TOOL_CALLS] is a special token of its tokenizers: the detokenizer skips
    special tokens, except the parser's markers."""
    from container.frontend.tool_calls import ToolPlan
    from container.text.incremental import IncrementalText
    from container.text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(base_model)
    marker = tokenizer.tokenizer.token_to_id("<|user|>")
    plan = ToolPlan(TOOLS, "auto", True, "mistral")
    plan_markers = {"mistral": ("<|user|>",)}
    import container.frontend.tool_calls as module
    saved, module.MARKERS = module.MARKERS, plan_markers      # <|user|> stands in for it
    try:
        kept = plan.marker_tokens(tokenizer)
    finally:
        module.MARKERS = saved
    assert kept == {marker: "<|user|>"}
    body = tokenizer.encode('hi ', add_special_tokens=False)
    call = tokenizer.encode('[{"name": "get_time", "arguments": {"zone": 1}}]',
                            add_special_tokens=False)
    text = IncrementalText(tokenizer, [], kept_special=kept)
    out = text.add(body).text + text.add([marker]).text + text.add(call).text + text.finish()
    assert out == 'hi <|user|>[{"name": "get_time", "arguments": {"zone": 1}}]'
    plain = IncrementalText(tokenizer, [])
    assert "<|user|>" not in plain.add(body + [marker] + call).text + plain.finish()
    assert ToolPlan(TOOLS, "required", True, "mistral").marker_tokens(tokenizer) == {}


# the parser read from the chat template ----------------------------------------------------
LLAMA31_LIKE = ('{%- if builtin_tools is defined %}<|python_tag|>{% endif %}Respond in the '
                'format {"name": function name, "parameters": dictionary of argument name and '
                'its value}.')


@pytest.mark.parametrize("option, templates, parser", [
    (None, [TEMPLATES["hermes"]], "hermes"),
    (None, [LLAMA31_LIKE], "llama3_json"),
    (None, ["<|python_start|>{{ t }}<|python_tag|>"], "pythonic"),      # Llama 4 style
    (None, ["plain {{ messages }}", TEMPLATES["mistral"]], "mistral"),  # a named tool_use one
    (None, ["plain {{ messages }}"], None),
    (None, [], None),
    ("pythonic", [TEMPLATES["hermes"]], "pythonic"),                    # the option wins
])
def test_the_parser_is_read_from_the_chat_template(option, templates, parser):
    from container.text.tool_format import tool_parser_for

    assert tool_parser_for(option, templates)[0] == parser


def test_named_templates_are_all_read(base_model, tmp_path):
    from container.text.tokenizer import TextTokenizer

    directory = tmp_path / "named"
    shutil.copytree(base_model, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "{{ messages }}"},
                               {"name": "tool_use", "template": TEMPLATES["hermes"]}]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = TextTokenizer(directory)
    assert tokenizer.chat_template == "{{ messages }}"
    assert len(tokenizer.chat_templates) == 2 and TEMPLATES["hermes"] in tokenizer.chat_templates
