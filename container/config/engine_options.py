"""Typed option classes that engines declare for themselves (DJL's per-engine properties).

An engine writes a dataclass whose fields are made with `option(...)`; that registers each key
(so serving.properties.example and the docs stay complete) and `from_options` validates a
model's options into an instance, raising OptionError naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from . import keys, values

T = TypeVar("T")


class OptionError(ValueError):
    def __init__(self, name: str, value: str, reason: str):
        super().__init__(f"option.{name}={value!r}: {reason}")
        self.name, self.value, self.reason = name, value, reason


def option(name: str, default: str | None, meaning: str, parse: values.Parser = values.text,
           scope: str = "native") -> Any:
    """A dataclass field backed by the key `option.<name>`; default is written as in a file."""
    keys.register(keys.Key(f"option.{name}", default, meaning, parse, scope=scope))
    parsed_default = None if default is None else parse(default)
    return dataclasses.field(default=parsed_default,
                             metadata={"option": name, "parse": parse})


def existing(name: str) -> Any:
    """A dataclass field for a key registered elsewhere (shared by several engines)."""
    key = keys.lookup(f"option.{name}")
    default = None if key.default is None else key.parse(key.default)
    return dataclasses.field(default=default, metadata={"option": name, "parse": key.parse})


def from_options(cls: type[T], options: dict[str, str]) -> T:
    lowered = {k.lower(): (k, v) for k, v in options.items()}
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("option")
        if name is None or name.lower() not in lowered:
            continue
        _, raw = lowered[name.lower()]
        try:
            kwargs[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise OptionError(name, raw, str(exc)) from None
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    if check:
        check()
    return instance


class EngineOptions:
    """Base class: `Options.from_options(model_options)`."""

    @classmethod
    def from_options(cls, options: dict[str, str]):
        return from_options(cls, options)

    def check_quantize(self, allowed: tuple[str, ...], engine: str) -> None:
        """option.quantize in lower case (None when blank), refused unless it is one of
        `allowed`: the methods the engine named by `engine` implements."""
        self.quantize = (self.quantize or "").strip().lower() or None
        if self.quantize and self.quantize not in allowed:
            raise OptionError("quantize", self.quantize,
                              f"allowed with {engine}: " + ", ".join(allowed))
