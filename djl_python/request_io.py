"""LMI's request and output objects, as custom input and output formatters see them.

An output formatter is called once per generation step with a TextGenerationOutput: its best
sequence's `get_next_token()` returns the step's new token and whether it is the first and the
last; the formatter returns the text to send for that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Token:
    id: int
    text: str
    log_prob: float | None = None
    special_token: bool = False

    def as_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "log_prob": self.log_prob,
                "special_token": self.special_token}


@dataclass
class Sequence:
    tokens: list[Token] = field(default_factory=list)
    cumulative_log_prob: float = 0.0
    finish_reason: str | None = None
    _next: int = 0
    _finished: bool = False

    def has_next_token(self) -> bool:
        return self._next < len(self.tokens)

    def get_next_token(self) -> tuple[Token, bool, bool]:
        """(token, is_first_token, is_last_token); advances to the next token."""
        index = self._next
        self._next += 1
        is_last = self._finished and self._next == len(self.tokens)
        return self.tokens[index], index == 0, is_last

    def append(self, token: Token) -> None:
        self.tokens.append(token)
        if token.log_prob is not None:
            self.cumulative_log_prob += token.log_prob


@dataclass
class RequestInput:
    request_id: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    output_formatter: str | Callable | None = None
    server_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextInput(RequestInput):
    input_text: str | list[str] = ""
    input_ids: list[int] = field(default_factory=list)
    adapters: Any = None
    tokenizer: Any = None


@dataclass
class RequestOutput:
    request_id: int = 0
    finished: bool = False
    input: RequestInput | None = None


@dataclass
class TextGenerationOutput(RequestOutput):
    sequences: dict[int, Sequence] = field(default_factory=dict)
    best_sequence_index: int = 0
    prompt_tokens_details: list[Token] = field(default_factory=list)
