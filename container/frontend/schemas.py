"""Request schemas (LMI / TGI text generation, OpenAI chat and completions) and their checks.

Validation errors become 400 with a message naming the field and what is allowed, e.g.
"parameters.temperature: must be >= 0 (got -1)".
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema,
                      field_validator)

from ..errors import bad_request

MAX_SEED = 2**63 - 1
MAX_STOP_SEQUENCES = 16

Temperature = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# What _stop_list accepts, for the OpenAPI document (/openapi.json).
StopSequences = Annotated[list[str], WithJsonSchema({
    "anyOf": [{"type": "string", "minLength": 1},
              {"type": "array", "items": {"type": "string", "minLength": 1},
               "maxItems": MAX_STOP_SEQUENCES},
              {"type": "null"}],
    "description": "generation stops before any of these; they are not part of the text"})]


def _stop_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a string or a list of strings")
    if len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(v == "" for v in value):
        raise ValueError("stop sequences must not be empty")
    return value


class LmiParameters(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, json_schema_extra={
        "description": "Also accepted: `max_tokens` for max_new_tokens and `stop` for "
                       "stop_sequences (each used when the LMI name is absent); top_k -1 is 0."})

    max_new_tokens: int = Field(30, ge=1, le=1_000_000, validation_alias="max_new_tokens")
    do_sample: bool = False
    temperature: Temperature = 1.0
    top_k: int = Field(0, ge=-1, le=1_000_000)
    top_p: TopP = 1.0
    repetition_penalty: Penalty = 1.0
    seed: Seed | None = None
    stop_sequences: StopSequences = Field(default_factory=list)
    return_full_text: bool = False
    details: bool = False
    ignore_eos: bool = False
    truncate: int | None = Field(None, ge=1)

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _stops(cls, value):
        return _stop_list(value)


class LmiRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    parameters: LmiParameters = Field(default_factory=LmiParameters)
    stream: bool = False

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _aliases(cls, value):
        if isinstance(value, dict):
            value = dict(value)
            if "max_new_tokens" not in value and "max_tokens" in value:
                value["max_new_tokens"] = value.pop("max_tokens")
            if "stop_sequences" not in value and "stop" in value:
                value["stop_sequences"] = value.pop("stop")
            if value.get("top_k") == -1:
                value["top_k"] = 0
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None

    def template_dict(self) -> dict:
        data = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                texts.append(part["text"])
            data["content"] = "".join(texts)
        elif self.content is None:
            data["content"] = ""
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAICommon(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 1.0
    top_p: TopP = 1.0
    top_k: int = Field(0, ge=-1, le=1_000_000)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopSequences = Field(default_factory=list)
    seed: Seed | None = None
    frequency_penalty: Annotated[float, Field(ge=0, le=0, allow_inf_nan=False)] = 0.0
    presence_penalty: Annotated[float, Field(ge=0, le=0, allow_inf_nan=False)] = 0.0
    repetition_penalty: Penalty = 1.0
    ignore_eos: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value):
        return _stop_list(value)


class ChatCompletionRequest(_OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=0)


class CompletionRequest(_OpenAICommon):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, le=1_000_000, description="null: 16, as unset")
    logprobs: int | None = Field(None, ge=0, le=0)
    echo: bool = False

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, value):
        return 16 if value is None else value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty")
        return value


def _describe(error: dict) -> str:
    location = ".".join(str(p) for p in error.get("loc", ()) if not str(p).startswith("function"))
    message = error.get("msg", "invalid")
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}
    for name, symbol in bounds.items():
        if kind == name:
            key = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[symbol]
            message = f"must be {symbol} {ctx.get(key)}"
    if kind == "finite_number":
        message = "must be a finite number"
    if kind == "missing":
        message = "is required"
    given = error.get("input")
    shown = ""
    if kind != "missing" and isinstance(given, (int, float, str, bool)) and not isinstance(given, dict):
        text = repr(given)
        shown = f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
    return f"{location or 'body'}: {message}{shown}"


def validate(model: type[BaseModel], payload: Any) -> BaseModel:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        detail = "; ".join(_describe(e) for e in errors[:3])
        if len(errors) > 3:
            detail += f"; and {len(errors) - 3} more"
        raise bad_request(detail) from None


def parse_json_body(raw: bytes) -> Any:
    if not raw:
        raise bad_request("the body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise bad_request("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
