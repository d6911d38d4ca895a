"""Messages between the HTTP front end and rank 0 of the worker group (msgpack via msgspec).

Front end -> worker: one message per request (HandleRequest or GenerateRequest), Abort.
Worker -> front end: Rejected (admission), HandleReply / StreamChunk (handlers), and for LLM
engines one TokenBatch per engine step carrying every new token of that front end's requests.
"""

from __future__ import annotations

import msgspec


class StructuredOutput(msgspec.Struct, frozen=True):
    """A grammar the output must follow (engine/structured.py compiles it with xgrammar)."""
    kind: str          # json_schema | json_object | regex | choice | ebnf
    spec: str          # the schema as JSON text, the regex, a JSON list of choices, the EBNF


class SamplingParams(msgspec.Struct, frozen=True):
    max_new_tokens: int = 30
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0                  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0           # alternatives per generated token (with logprobs)
    prompt_logprobs: int = -1       # -1: off; k >= 0: each prompt token's log-prob + top k
    presence_penalty: float = 0.0   # OpenAI's: on tokens generated so far
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = {}
    min_tokens: int = 0             # EOS and stop_token_ids are masked until this many
    min_p: float = 0.0              # 0: off
    typical_p: float = 1.0          # 1: off
    structured: StructuredOutput | None = None


class HandleRequest(msgspec.Struct, tag="handle", tag_field="kind"):
    request_id: str
    generation: int
    properties: dict[str, str]
    content: list[tuple[str, bytes]]
    arrival_time: float = 0.0        # time.time() at the front end: queue-time metric


class GenerateRequest(msgspec.Struct, tag="generate", tag_field="kind"):
    request_id: str
    generation: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    arrival_time: float = 0.0
    adapter: str = ""                # a LoRA adapter's name (native engine); "": the base model


class AdapterRequest(msgspec.Struct, tag="adapter", tag_field="kind"):
    """DJL's adapters API: register | update | unregister | list | describe."""
    request_id: str
    generation: int
    action: str
    name: str = ""
    properties: dict[str, str] = {}
    limit: int = 100
    page_token: int = 0
    arrival_time: float = 0.0


class Abort(msgspec.Struct, tag="abort", tag_field="kind"):
    request_id: str


class StatsRequest(msgspec.Struct, tag="stats", tag_field="kind"):
    request_id: str


class Stats(msgspec.Struct, tag="stats_reply", tag_field="kind"):
    request_id: str
    values: dict[str, float]


class Rejected(msgspec.Struct, tag="rejected", tag_field="kind"):
    request_id: str
    code: int
    type: str
    message: str


class HandleReply(msgspec.Struct, tag="reply", tag_field="kind"):
    request_id: str
    code: int
    message: str
    properties: dict[str, str]
    body: bytes
    streaming: bool = False          # true: StreamChunks follow


class StreamChunk(msgspec.Struct, tag="chunk", tag_field="kind"):
    request_id: str
    data: bytes
    last: bool = False
    error: str | None = None


TopLogprobs = list[tuple[int, float]]      # (token id, log-prob), most likely first


class TokenDelta(msgspec.Struct, array_like=True):
    request_id: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str | None = None     # length | eos_token | stop | abort | error
    error: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    top_logprobs: list[TopLogprobs] | None = None     # per token, with logprobs
    # once, on the first delta: prompt tokens 1..P-1's log-probs (and their top k)
    prompt_logprobs: list[float] | None = None
    prompt_top_logprobs: list[TopLogprobs] | None = None


class TokenBatch(msgspec.Struct, tag="tokens", tag_field="kind"):
    deltas: list[TokenDelta]


ToWorker = HandleRequest | GenerateRequest | AdapterRequest | Abort | StatsRequest
ToFrontend = Rejected | HandleReply | StreamChunk | TokenBatch | Stats

_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_to_frontend = msgspec.msgpack.Decoder(ToFrontend)


def encode(message) -> bytes:
    return _encoder.encode(message)


def decode_to_worker(data: bytes) -> ToWorker:
    return _to_worker.decode(data)


def decode_to_frontend(data: bytes) -> ToFrontend:
    return _to_frontend.decode(data)
