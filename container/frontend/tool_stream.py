"""Incremental tool-call parsing: the model's text, fed as it arrives, becomes OpenAI deltas.

One state machine per format, fed character by character; they share the readers of the
shapes the formats have in common:

- `JsonCallReader`: one {"name": ..., "arguments" | "parameters": {...}} object. The name is
  announced once its string is complete; the arguments value is passed on raw, character by
  character, as the model writes it (so the pieces concatenate to exactly its JSON text).
- `JsonCallSequence`: such objects one after another, optionally inside [ ... ], separated by
  "," or ";" (Mistral's array, Llama 3's "a; b", the grammar of tool_choice "required").
- `PythonicCallSequence`: [f(a=1, b="x"), g()]: each keyword argument, once its literal is
  complete, is written out as JSON ({"a": 1 then , "b": "x" then }).

Formats (option.tool_call_parser), as vLLM's parsers of the same names read them:
  hermes        text <tool_call>{"name", "arguments"}</tool_call> text ...
  mistral       text [TOOL_CALLS] [{"name", "arguments"}, ...]
  llama3_json   [<|python_tag|>]{"name", "parameters"}; {...}     (the answer starts with it)
  pythonic      [f(x=1), g(y="a")]                                  (the answer starts with it)
and the two that tool_choice enforces through a grammar: "required" ([{"name", "arguments"},
...]) and a named function (the text is the arguments).

`ToolCallStream.feed(text)` returns the deltas to send now: {"content": ...} for text outside
calls and {"tool_calls": [...]} where a call's first delta has index, id, type and
function.name (arguments ""), and the next ones carry function.arguments pieces. Text that may
still turn out to be the start of a call marker is held back until it is known. The
non-streamed answer is the same machine run over the whole text, so both agree exactly.
"""

from __future__ import annotations

import ast
import json
import uuid

WHITESPACE = " \t\r\n"
IDENT_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
IDENT = IDENT_START + "0123456789."


class Malformed(Exception):
    """The text stopped following the format."""


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# the sink: calls announced, their arguments, and the deltas that say so ------------------------
class CallSink:
    """Receives what the readers find and turns it into OpenAI deltas. Calls of a function not
    in `allowed`, or beyond the first without parallel calls, are read but not sent."""

    def __init__(self, allowed: set[str] | None, parallel: bool):
        self.allowed = allowed
        self.parallel = parallel
        self.calls: list[dict] = []          # sent calls, their arguments so far
        self.closed: list[bool] = []
        self.deltas: list[dict] = []
        self._current: int | None = None     # index of the open call, None: ignored or none
        self._open = False
        self.opens = 0                        # calls begun, sent or not
        self._blank = ""                      # trailing whitespace of the content, held

    def content(self, text: str) -> None:
        """Whitespace next to a call is not content: a run of it is held until text follows,
        dropped when a call begins, and sent at the end only if no call was made."""
        text = self._blank + text
        end = len(text.rstrip(WHITESPACE))
        self._blank = text[end:]
        self._send_content(text[:end])

    def _send_content(self, text: str) -> None:
        if not text:
            return
        if self.deltas and "content" in self.deltas[-1]:
            self.deltas[-1]["content"] += text
        else:
            self.deltas.append({"content": text})

    def end(self) -> None:
        if not self.calls:
            self._send_content(self._blank)
        self._blank = ""

    def open(self, name: str) -> None:
        self._open = True
        self.opens += 1
        self._blank = ""
        if (self.allowed is not None and name not in self.allowed) or \
                (self.calls and not self.parallel):
            self._current = None
            return
        index = len(self.calls)
        call = {"id": call_id(), "type": "function", "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        self.closed.append(False)
        self._current = index
        self.deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})

    def arguments(self, piece: str) -> None:
        if self._current is None or not piece:
            return
        self.calls[self._current]["function"]["arguments"] += piece
        last = self.deltas[-1]["tool_calls"][-1] if self.deltas and \
            "tool_calls" in self.deltas[-1] else None
        if last is not None and last["index"] == self._current and "id" not in last:
            last["function"]["arguments"] += piece
        else:
            self.deltas.append({"tool_calls": [{"index": self._current,
                                                "function": {"arguments": piece}}]})

    def close(self) -> None:
        if self._current is not None:
            self.closed[self._current] = True
        self._current, self._open = None, False

    def abandon(self) -> None:
        """The open call broke off: it stays unfinished."""
        self._current, self._open = None, False

    @property
    def in_call(self) -> bool:
        return self._open

    def take(self) -> list[dict]:
        out, self.deltas = self.deltas, []
        return out


# JSON values, read raw ----------------------------------------------------------------------------
class RawValue:
    """Finds where one JSON value ends. push(ch) -> True while ch belongs to the value; False
    for the first character after a scalar (which it does not consume)."""

    def __init__(self):
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.done = False
        self.scalar = False

    def push(self, ch: str) -> bool:
        if not self.started:
            self.started = True
            if ch in "{[":
                self.depth = 1
            elif ch == '"':
                self.in_string = True
            elif ch in "-0123456789tfn":
                self.scalar = True
            else:
                raise Malformed(f"unexpected {ch!r} at the start of a JSON value")
            return True
        if self.scalar:
            if ch in ",}]" + WHITESPACE + ";":
                self.done = True
                return False
            return True
        if self.in_string:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_string = False
                if self.depth == 0:
                    self.done = True
            return True
        if ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.done = True
        return True


class JsonCallReader:
    """One call object, from its "{" (the first character pushed) to its "}"."""

    ARGUMENT_KEYS = ("arguments", "parameters")

    def __init__(self, sink: CallSink):
        self.sink = sink
        self.state = "open"          # open key colon value after done
        self.key = ""
        self.key_value: RawValue | None = None
        self.value: RawValue | None = None
        self.raw = ""                # the current value's text
        self.name: str | None = None
        self.held_arguments: str | None = None   # arguments written before the name
        self.arguments_seen = False
        self.done = False

    def push(self, ch: str) -> bool:
        """Consume ch; False when ch is not part of the object (it ends a scalar value and
        must be pushed again)."""
        state = self.state
        if state == "open":
            if ch != "{":
                raise Malformed("a tool call must start with {")
            self.state = "before_key"
        elif state == "before_key":
            if ch in WHITESPACE:
                pass
            elif ch == '"':
                self.key_value, self.key = RawValue(), '"'
                self.key_value.push(ch)
                self.state = "key"
            elif ch == "}":
                self._end()
            else:
                raise Malformed(f"unexpected {ch!r} before a key")
        elif state == "key":
            self.key_value.push(ch)
            self.key += ch
            if self.key_value.done:
                self.key = json.loads(self.key)
                self.state = "colon"
        elif state == "colon":
            if ch == ":":
                self.state = "before_value"
            elif ch not in WHITESPACE:
                raise Malformed(f"expected : after {self.key!r}")
        elif state == "before_value":
            if ch in WHITESPACE:
                return True
            self.value, self.raw = RawValue(), ""
            self.state = "value"
            return self._value(ch)
        elif state == "value":
            return self._value(ch)
        elif state == "after_value":
            if ch == ",":
                self.state = "before_key"
            elif ch == "}":
                self._end()
            elif ch not in WHITESPACE:
                raise Malformed(f"unexpected {ch!r} after a value")
        return True

    def _streams_arguments(self) -> bool:
        return self.key in self.ARGUMENT_KEYS and not self.arguments_seen

    def _value(self, ch: str) -> bool:
        consumed = self.value.push(ch)
        if consumed:
            self.raw += ch
            if self._streams_arguments() and not self.raw.startswith('"'):
                if self.name is not None:
                    self.sink.arguments(ch)
                else:
                    self.held_arguments = (self.held_arguments or "") + ch
        if self.value.done:
            self._value_done()
            if not consumed:
                return self.push(ch)
        return consumed

    def _value_done(self) -> None:
        self.state = "after_value"
        if self.key == "name" and self.name is None:
            name = json.loads(self.raw)
            if not isinstance(name, str):
                raise Malformed("a tool call's name must be a string")
            self.name = name
            self.sink.open(name)
            if self.held_arguments is not None:
                self.sink.arguments(self.held_arguments)
                self.held_arguments = None
        elif self._streams_arguments():
            self.arguments_seen = True
            if self.raw.startswith('"'):            # arguments given as a JSON string
                text = json.loads(self.raw)
                if self.name is not None:
                    self.sink.arguments(text)
                else:
                    self.held_arguments = text

    def _end(self) -> None:
        if self.name is None:
            raise Malformed("a tool call without a name")
        if not self.arguments_seen:
            self.sink.arguments("{}")
        self.sink.close()
        self.done = True


class JsonCallSequence:
    """Call objects one after another: `[` ... `]` when bracketed, separated by "," (in an
    array) or ";" (Llama 3)."""

    def __init__(self, sink: CallSink, bracketed: bool, separators: str = ","):
        self.sink = sink
        self.bracketed = bracketed
        self.separators = separators
        self.state = "start" if bracketed else "item"
        self.reader: JsonCallReader | None = None
        self.count = 0
        self.done = False

    @property
    def finished(self) -> bool:
        """Every call is complete (an unbracketed sequence has no end of its own)."""
        return self.done or (not self.bracketed and self.count > 0 and
                             self.state in ("between", "item"))

    def push(self, ch: str) -> bool:
        if self.state == "start":
            if ch == "[":
                self.state = "item"
            elif ch == "{":           # a single object where an array was expected
                self.bracketed = False
                self.state = "item"
                return self.push(ch)
            elif ch not in WHITESPACE:
                raise Malformed("expected [")
        elif self.state == "item":
            if ch in WHITESPACE:
                return True
            if ch == "]" and self.bracketed and self.count == 0:
                self.done = True
                return True
            self.reader = JsonCallReader(self.sink)
            self.state = "in_item"
            return self.push(ch)
        elif self.state == "in_item":
            consumed = self.reader.push(ch)
            if self.reader.done:
                self.count += 1
                self.state = "between"
            if not consumed:
                return self.push(ch)
        elif self.state == "between":
            if ch in WHITESPACE:
                return True
            if ch in self.separators:
                self.state = "item"
            elif ch == "]" and self.bracketed:
                self.done = True
            elif not self.bracketed:
                return False               # the sequence ended: ch is someone else's
            else:
                raise Malformed(f"unexpected {ch!r} between calls")
        return True


class PythonicCallSequence:
    """[f(a=1, b="x"), g()] with Python literals as values, written out as JSON arguments."""

    def __init__(self, sink: CallSink):
        self.sink = sink
        self.state = "start"
        self.word = ""
        self.value = ""
        self.depth = 0
        self.quote = ""
        self.escape = False
        self.arguments = 0
        self.done = False

    @property
    def finished(self) -> bool:
        return self.done

    def push(self, ch: str) -> bool:
        state = self.state
        if state == "start":
            if ch == "[":
                self.state = "item"
            elif ch not in WHITESPACE:
                raise Malformed("expected [")
        elif state == "item":
            if ch in WHITESPACE:
                pass
            elif ch in IDENT_START:
                self.word, self.state = ch, "name"
            elif ch == "]":
                self.done = True
            else:
                raise Malformed(f"unexpected {ch!r} where a call was expected")
        elif state == "name":
            if ch in IDENT:
                self.word += ch
            elif ch == "(":
                self.sink.open(self.word)
                self.arguments, self.state = 0, "before_keyword"
            else:
                raise Malformed(f"expected ( after {self.word!r}")
        elif state == "before_keyword":
            if ch in WHITESPACE:
                pass
            elif ch in IDENT_START:
                self.word, self.state = ch, "keyword"
            elif ch == ")":
                self._close_call()
            else:
                raise Malformed(f"unexpected {ch!r} in the arguments")
        elif state == "keyword":
            if ch in IDENT and ch != ".":
                self.word += ch
            elif ch == "=":
                self.value, self.depth, self.quote, self.state = "", 0, "", "value"
            elif ch in WHITESPACE:
                self.state = "equals"
            else:
                raise Malformed(f"expected = after {self.word!r}")
        elif state == "equals":
            if ch == "=":
                self.value, self.depth, self.quote, self.state = "", 0, "", "value"
            elif ch not in WHITESPACE:
                raise Malformed(f"expected = after {self.word!r}")
        elif state == "value":
            self._value(ch)
        elif state == "after_call":
            if ch in WHITESPACE:
                pass
            elif ch == ",":
                self.state = "item"
            elif ch == "]":
                self.done = True
            else:
                raise Malformed(f"unexpected {ch!r} between calls")
        return True

    def _value(self, ch: str) -> None:
        if self.quote:
            self.value += ch
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == self.quote:
                self.quote = ""
            return
        if self.depth == 0 and ch in ",)":
            self._emit_argument()
            if ch == ")":
                self._close_call()
            else:
                self.state = "before_keyword"
            return
        if ch in "'\"":
            self.quote = ch
        elif ch in "[({":
            self.depth += 1
        elif ch in "])}":
            self.depth -= 1
        self.value += ch

    def _emit_argument(self) -> None:
        try:
            value = ast.literal_eval(self.value.strip())
        except (ValueError, SyntaxError) as exc:
            raise Malformed(f"argument {self.word!r} is not a literal") from exc
        try:
            text = json.dumps(value, ensure_ascii=False)
        except TypeError as exc:
            raise Malformed(f"argument {self.word!r} has no JSON form") from exc
        self.sink.arguments(("{" if not self.arguments else ", ") +
                            f"{json.dumps(self.word)}: {text}")
        self.arguments += 1

    def _close_call(self) -> None:
        self.sink.arguments("}" if self.arguments else "{}")
        self.sink.close()
        self.state = "after_call"


# formats --------------------------------------------------------------------------------------
class _Format:
    """Common driving: content outside calls, a reader inside them, failure into content."""

    def __init__(self, sink: CallSink):
        self.sink = sink
        self.failed = False
        self.sent_at = 0          # calls sent when the held text began

    def feed(self, text: str) -> None:
        for ch in text:
            if self.failed:
                self.sink.content(ch)
                continue
            try:
                self.push(ch)
            except Malformed:
                self.fail()

    def fail(self) -> None:
        """Not a call after all: what was held back is content, and so is the rest."""
        self.failed = True
        held = self.held()
        if self.sink.in_call:
            self.sink.abandon()
        if len(self.sink.calls) == self.sent_at:     # else it was sent as a call already
            self.sink.content(held)

    def finish(self) -> bool:
        """The text ended; True when no call was left unfinished. Text held for a call that
        never came to be sent is content."""
        if self.failed:
            return True
        complete = self.finish_format()
        if not complete and len(self.sink.calls) == self.sent_at:
            self.sink.content(self.held())
        return complete

    def finish_format(self) -> bool:
        raise NotImplementedError

    def held(self) -> str:
        return ""

    def push(self, ch: str) -> None:
        raise NotImplementedError


class _MarkerFormat(_Format):
    """Content until a marker; then calls (hermes, mistral)."""

    marker = ""

    def __init__(self, sink: CallSink):
        super().__init__(sink)
        self.pending = ""         # text that may be the start of the marker
        self.raw = ""             # the text of the call being read (content if it fails)
        self.reading = False

    def push(self, ch: str) -> None:
        if self.reading:
            self.raw += ch
            self.push_call(ch)
            return
        self.pending += ch
        if self.marker.startswith(self.pending):
            if self.pending == self.marker:
                self.pending, self.raw, self.reading = "", self.marker, True
                self.sent_at = len(self.sink.calls)
                self.start_call()
            return
        # the marker is not here: release up to the next place it may begin
        for cut in range(1, len(self.pending) + 1):
            if self.marker.startswith(self.pending[cut:]):
                self.sink.content(self.pending[:cut])
                self.pending = self.pending[cut:]
                return

    def held(self) -> str:
        out = self.raw + self.pending
        self.raw = self.pending = ""
        return out

    def end_call(self) -> None:
        self.reading, self.raw = False, ""

    def finish_format(self) -> bool:
        if self.reading:
            return False
        self.sink.content(self.pending)
        self.pending = ""
        return True


class HermesFormat(_MarkerFormat):
    marker = "<tool_call>"
    closing = "</tool_call>"

    def start_call(self) -> None:
        self.reader = JsonCallReader(self.sink)
        self.state = "before"
        self.tail = ""

    def push_call(self, ch: str) -> None:
        if self.state == "before":
            if ch in WHITESPACE:
                return
            self.state = "object"
        if self.state == "object":
            consumed = self.reader.push(ch)
            if self.reader.done:
                self.state = "closing"
            if consumed:
                return
        if ch in WHITESPACE and not self.tail:
            return
        self.tail += ch
        if not self.closing.startswith(self.tail):
            raise Malformed("expected </tool_call>")
        if self.tail == self.closing:
            self.end_call()

    def finish_format(self) -> bool:
        if self.reading and self.state == "closing" and self.closing.startswith(self.tail):
            self.end_call()         # the model stopped before (or within) </tool_call>
        return super().finish_format()


class MistralFormat(_MarkerFormat):
    marker = "[TOOL_CALLS]"

    def start_call(self) -> None:
        self.sequence = JsonCallSequence(self.sink, bracketed=True)

    def push_call(self, ch: str) -> None:
        if self.sequence.done:
            if ch not in WHITESPACE:       # text after the calls
                self.end_call()
                self.push(ch)
            return
        if not self.sequence.push(ch):
            raise Malformed("unexpected text in the calls")
        if self.sequence.done:
            self.raw = ""

    def finish_format(self) -> bool:
        if self.reading and self.sequence.finished:
            self.end_call()
        return super().finish_format()


class _LeadingFormat(_Format):
    """The answer is calls when it starts with them (after whitespace and an optional
    prefix token), else content (llama3_json, pythonic)."""

    prefix = ""
    opener = ""

    def __init__(self, sink: CallSink):
        super().__init__(sink)
        self.mode = "start"       # start -> calls | content
        self.raw = ""

    def push(self, ch: str) -> None:
        if self.mode == "content":
            self.sink.content(ch)
            return
        self.raw += ch
        if self.mode == "start":
            stripped = self.raw.lstrip(WHITESPACE)
            if not stripped:
                return
            if self.prefix and self.prefix.startswith(stripped) and stripped != self.prefix:
                return                          # maybe the prefix token
            rest = stripped[len(self.prefix):] if stripped.startswith(self.prefix) and \
                self.prefix else stripped
            rest = rest.lstrip(WHITESPACE)
            if not rest:
                return
            if not rest.startswith(self.opener):
                self.mode = "content"
                self.sink.content(self.raw)
                self.raw = ""
                return
            self.mode = "calls"
            self.sequence = self.new_sequence()
            for c in rest:
                self.push_calls(c)
            return
        self.push_calls(ch)

    def push_calls(self, ch: str) -> None:
        if self.sequence.done or not self.sequence.push(ch):
            if ch not in WHITESPACE:       # text after the calls is content
                self.mode = "content"
                self.sink.content(ch)

    def held(self) -> str:
        out, self.raw = self.raw, ""
        return out

    def finish_format(self) -> bool:
        if self.mode == "content":
            return True
        if self.mode == "start":
            self.sink.content(self.held())
            return True
        return self.sequence.finished and not self.sink.in_call


class Llama3JsonFormat(_LeadingFormat):
    prefix = "<|python_tag|>"
    opener = "{"

    def new_sequence(self):
        return JsonCallSequence(self.sink, bracketed=False, separators=";")


class PythonicFormat(_LeadingFormat):
    prefix = "<|python_start|>"
    opener = "["

    def new_sequence(self):
        return PythonicCallSequence(self.sink)


class RequiredFormat(_Format):
    """tool_choice "required": the grammar's [{"name", "arguments"}, ...]."""

    def __init__(self, sink: CallSink):
        super().__init__(sink)
        self.sequence = JsonCallSequence(sink, bracketed=True)

    def push(self, ch: str) -> None:
        if self.sequence.done:
            if ch not in WHITESPACE:
                raise Malformed("text after the calls")
            return
        if not self.sequence.push(ch):
            raise Malformed("text after the calls")

    def finish_format(self) -> bool:
        return self.sequence.done


class NamedFormat(_Format):
    """A named tool_choice: the whole text is that function's arguments."""

    def __init__(self, sink: CallSink, name: str):
        super().__init__(sink)
        self.text = ""
        sink.open(name)

    def push(self, ch: str) -> None:
        self.text += ch
        self.sink.arguments(ch)

    def finish_format(self) -> bool:
        try:
            json.loads(self.text)
        except ValueError:
            return False
        self.sink.close()
        return True


FORMATS = {"hermes": HermesFormat, "mistral": MistralFormat, "llama3_json": Llama3JsonFormat,
           "pythonic": PythonicFormat}


class ToolCallStream:
    """One sample's text, fed as it is generated, as content and tool-call deltas."""

    def __init__(self, choice: str, parser: str | None = None, named: str | None = None,
                 allowed: set[str] | None = None, parallel: bool = True):
        self.text = ""
        self.sink = CallSink(allowed if choice == "auto" else None, parallel or
                             choice != "auto")
        if choice == "named":
            self.format = NamedFormat(self.sink, named)
        elif choice == "required":
            self.format = RequiredFormat(self.sink)
        else:
            self.format = FORMATS[parser](self.sink)
        self.complete: bool | None = None
        self.content = ""

    def feed(self, text: str) -> list[dict]:
        self.text += text
        self.format.feed(text)
        return self._take()

    def finish(self) -> list[dict]:
        self.complete = self.format.finish() and all(self.sink.closed)
        self.sink.end()
        return self._take()

    def _take(self) -> list[dict]:
        deltas = self.sink.take()
        for delta in deltas:
            self.content += delta.get("content", "")
        return deltas

    @property
    def calls(self) -> list[dict]:
        return self.sink.calls


def parse_all(stream: ToolCallStream, text: str) -> tuple[str | None, list[dict], bool]:
    """The non-streamed answer: (content, calls, complete). A call left unfinished (the text
    was cut short) gives no calls and the whole text as content."""
    stream.feed(text)
    stream.finish()
    if stream.calls and stream.complete:
        return stream.content or None, stream.calls, True
    return text, [], not stream.calls
