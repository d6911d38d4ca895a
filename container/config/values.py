"""Parsers for configuration values. Each raises ValueError whose text says what is allowed."""

from __future__ import annotations

import math
from typing import Callable

Parser = Callable[[str], object]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("allowed: true or false")


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(_range_text("an integer", minimum, maximum)) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(_range_text("an integer", minimum, maximum))
        return value
    return parse


def number(minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False) -> Parser:
    if exclusive_minimum:
        allowed = f"allowed: a number greater than {minimum}" + (
            f" and at most {maximum}" if maximum is not None else "")
    else:
        allowed = _range_text("a number", minimum, maximum)

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(allowed) from None
        too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        too_high = maximum is not None and value > maximum
        if not math.isfinite(value) or too_low or too_high:
            raise ValueError(allowed)
        return value
    return parse


def choice(*allowed: str, aliases: dict[str, str] | None = None) -> Parser:
    """Case-insensitive choice; returns the canonical spelling."""
    canonical = {a.lower(): a for a in allowed}
    for alias, target in (aliases or {}).items():
        canonical[alias.lower()] = target

    def parse(text: str) -> str:
        key = text.strip().lower()
        if key not in canonical:
            raise ValueError("allowed: " + ", ".join(allowed))
        return canonical[key]
    return parse


def text(value: str) -> str:
    return value


def non_empty_text(value: str) -> str:
    if not value.strip():
        raise ValueError("allowed: a non-empty string")
    return value.strip()


def _range_text(kind: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"allowed: {kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"allowed: {kind} >= {minimum}"
    if maximum is not None:
        return f"allowed: {kind} <= {maximum}"
    return f"allowed: {kind}"
