"""Parse serving.properties with Java .properties rules.

Rules (java.util.Properties.load): `#` and `!` start comment lines; a key ends at the first
unescaped `=`, `:` or whitespace; whitespace around the separator is skipped; a line ending in
an odd number of backslashes continues on the next line (whose leading whitespace is dropped);
`\\t \\n \\r \\f \\uXXXX` escapes are decoded and any other escaped character stands for itself.

One deliberate difference from Java: trailing whitespace in values is trimmed, because a
trailing space (`engine=MPI `) is invisible in an editor and DJL users lose hours to it.
"""

from __future__ import annotations

import re

_SEPARATORS = "=:"
_WHITESPACE = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
# Java's line terminators only: str.splitlines() would also break at \f, \x1c-\x1e, \x85, \u2028...
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PropertiesSyntaxError(ValueError):
    pass


def _logical_lines(text: str):
    """Yield (line_number, logical_line) with continuations joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        line = raw.lstrip(_WHITESPACE)
        if not pending:
            start = number
            if not line or line[0] in "#!":
                continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, "".join(pending)
        pending = []
    if pending:
        yield start, "".join(pending)


def _unescape(text: str, line_number: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        i += 1
        if i >= len(text):
            break
        ch = text[i]
        if ch == "u":
            digits = text[i + 1:i + 5]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise PropertiesSyntaxError(
                    f"line {line_number}: malformed \\uXXXX escape {text[i - 1:i + 5]!r}")
            out.append(chr(int(digits, 16)))
            i += 5
            continue
        out.append(_ESCAPES.get(ch, ch))
        i += 1
    return "".join(out)


def _split_key_value(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in _SEPARATORS or ch in _WHITESPACE:
            break
        i += 1
    key, rest = line[:i], line[i:]
    rest = rest.lstrip(_WHITESPACE)
    if rest and rest[0] in _SEPARATORS:
        rest = rest[1:].lstrip(_WHITESPACE)
    return key, rest


def parse_properties(text: str) -> dict[str, str]:
    """Return the key/value pairs of a .properties document; later keys win."""
    result: dict[str, str] = {}
    for line_number, line in _logical_lines(text):
        key, value = _split_key_value(line)
        key = _unescape(key, line_number).strip()
        if not key:
            continue
        result[key] = _unescape(value, line_number).strip()
    return result
