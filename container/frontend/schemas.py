"""Request schemas (LMI / TGI text generation, OpenAI chat and completions) and their checks.

Validation errors become 400 with a message naming the field and what is allowed, e.g.
"parameters.temperature: must be >= 0 (got -1)".
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema,
                      field_validator, model_validator)

from ..errors import bad_request

MAX_SEED = 2**63 - 1
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
MAX_SAMPLES = 16             # n and best_of: each sample is a request in flight

# Fields of the OpenAI / vLLM / LMI schemas this server does not implement, with the values
# that mean "off" (those are accepted). Any other value is a 400 naming the field: a request
# must never be answered as if a field it relies on had been honoured.
NOT_IMPLEMENTED = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "parallel_tool_calls": (None, True, False),
    "guided_decoding_backend": (None, "xgrammar"),
    "suffix": (None, ""), "use_beam_search": (None, False), "num_beams": (None, 1),
    "length_penalty": (None, 1, 1.0), "prompt_logprobs": (None,), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "web_search_options": (None,),
    "reasoning_effort": (None,), "logits_processors": (None, []),
}


def refuse_unimplemented(value, where: str = "", implemented=frozenset()):
    """A before-validator: 400 for a field of NOT_IMPLEMENTED set to something not "off"
    (implemented: the names this schema does handle)."""
    if isinstance(value, dict):
        for name, off in NOT_IMPLEMENTED.items():
            if name in value and name not in implemented and value[name] not in off:
                raise bad_request(f"{where}{name}: not supported by this server; remove it "
                                  f"(or set it to {off[0]!r})" if off[0] is not None else
                                  f"{where}{name}: not supported by this server; remove it")
    return value

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
    top_n_tokens: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS,
                              description="with details: each token's most likely alternatives")
    decoder_input_details: bool = Field(False, description="details.prefill: the prompt's "
                                        "tokens with their log-probs (not with stream)")
    typical_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    min_p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] = 0.0
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list,
                                                             max_length=64)
    min_tokens: int = Field(0, ge=0, le=1_000_000)
    response_format: dict | None = None
    structured_outputs: dict | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    n: int = Field(1, ge=1, le=1, description="one sequence per input")
    best_of: int = Field(1, ge=1, le=1, description="one sequence per input")

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _stops(cls, value):
        return _stop_list(value)


class LmiRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    parameters: LmiParameters = Field(default_factory=LmiParameters)
    stream: bool = False
    # LMI's LoRA choice: one adapter name, or one per input ("": the base model)
    adapters: str | list[str] | None = None

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _aliases(cls, value):
        refuse_unimplemented(value, "parameters.")
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


BiasValue = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]
OpenAIPenalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]


class _OpenAICommon(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 1.0
    top_p: TopP = 1.0
    top_k: int = Field(0, ge=-1, le=1_000_000)
    min_p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    n: int = Field(1, ge=1, le=MAX_SAMPLES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopSequences = Field(default_factory=list)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list,
                                                             max_length=64)
    seed: Seed | None = None
    frequency_penalty: OpenAIPenalty = 0.0
    presence_penalty: OpenAIPenalty = 0.0
    repetition_penalty: Penalty = 1.0
    logit_bias: dict[str, BiasValue] | None = Field(None, max_length=300, description=
                                                    "token id (as a string) -> added logit")
    min_tokens: int = Field(0, ge=0, le=1_000_000)
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = Field(False, description="log-prob tokens named "
                                             "\"token_id:N\" (as vLLM)")
    user: str | None = Field(None, max_length=256, description="recorded nowhere; accepted")
    # structured output (frontend/structured_output.py reads and checks these)
    response_format: dict | None = Field(None, description='{"type": "text" | "json_object" | '
                                         '"json_schema", "json_schema": {"schema": ...}}')
    structured_outputs: dict | None = Field(None, description='vLLM: {"json" | "regex" | '
                                            '"choice" | "grammar" | "json_object": ...}')
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = Field(None, description="EBNF (xgrammar's dialect)")

    IMPLEMENTED: ClassVar[frozenset] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _unimplemented(cls, value):
        return refuse_unimplemented(value, implemented=cls.IMPLEMENTED)

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value):
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value):
        return _stop_list(value)


class ChatCompletionRequest(_OpenAICommon):
    IMPLEMENTED: ClassVar[frozenset] = frozenset({"tools", "tool_choice",
                                                  "parallel_tool_calls"})

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict] | None = Field(None, max_length=128, description=
                                     '[{"type": "function", "function": {"name", '
                                     '"description", "parameters"}}]')
    tool_choice: str | dict | None = Field(None, description='"none" | "auto" (needs '
                                           'option.tool_call_parser) | "required" | '
                                           '{"type": "function", "function": {"name"}}')
    parallel_tool_calls: bool = True
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_OpenAICommon):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0, le=1_000_000, description="null: 16, as unset; "
                                   "0 with echo: only the prompt's log-probs")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="samples drawn; the n "
                                "with the highest cumulative log-prob are returned")

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
