"""Text generation over HTTP: LMI's schema on /invocations, OpenAI's chat and completions.

/invocations takes {"inputs", "parameters", "stream"} (LMI / TGI), or a body with "messages"
(an OpenAI chat completion) or "prompt" (an OpenAI completion). Streaming LMI responses are
JSON lines by default ({"token": {...}} per token; the last line adds generated_text and
details), or server-sent events with option.output_formatter=sse. The OpenAI routes stream
server-sent events ending in `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import gevent
import msgspec

from flask import Response, request

from ..errors import ServingError, bad_request
from ..text.tokenizer import TextTokenizer
from ..text.tool_format import tool_parser_for
from ..workers import protocol
from .engine_client import EngineClient
from .generation import Generation, Result, merged_pieces, wait_all, wait_all_staggered
from .logprob_format import (TokenIdNames, chat_logprobs, completion_logprobs, lmi_prefill,
                             lmi_top_tokens)
from .http_utils import engine_request_id
from .lora_select import lmi_adapters, openai_adapter, request_adapter
from .structured_output import structured_from
from .tool_calls import ToolPlan, template_messages
from .schemas import (ChatCompletionRequest, CompletionRequest, LmiRequest, parse_json_body,
                      validate)

STRUCTURED_FIELDS = {"response_format", "structured_outputs", "guided_json", "guided_regex",
                     "guided_choice", "guided_grammar"}
OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@lru_cache(maxsize=2)
def _load_tokenizer(path: str) -> TextTokenizer:
    return TextTokenizer(path)


class LlmContext:
    """What a route needs about the served LLM (from the worker's published model info)."""

    def __init__(self, client: EngineClient, config):
        client.ready_generation()                 # 503 while loading or restarting
        info = client.model_info()
        if info.get("kind") != "llm":
            raise ServingError(404, "NotFound", "this route serves LLM engines; this model is a "
                                                "custom handler: use /invocations")
        self.client = client
        self.config = config
        self.info = info
        self.tokenizer = _load_tokenizer(info["tokenizer_dir"])
        self.max_model_len = int(info["max_model_len"])
        self.max_input_len = int(info.get("max_input_len") or self.max_model_len)
        self.model_name = config.model_name
        self.adapter = request_adapter(info, self.model_name)   # header or ?adapter=
        # the option, else detected from the chat template (the worker logs the same choice)
        self.tool_parser, self.tool_parser_reason = tool_parser_for(
            config.option("tool_call_parser"), self.tokenizer.chat_templates)

    def check_count(self, count: int, field: str) -> None:
        """A list of prompts is that many requests: more than the job queue holds could only
        ever be answered 503 "retry later"."""
        limit = int(self.config.setting("job_queue_size"))
        if count > limit:
            raise bad_request(f"{field}: {count} prompts in one request, more than this server's "
                              f"job_queue_size={limit} requests in flight; send at most {limit}")

    def check_text(self, text: str, field: str) -> None:
        """400 for a text too long to fit max_input_len whatever its tokens, before spending
        seconds of this front-end process tokenizing megabytes. The bound allows 4 characters per
        character a token holds (normalizers may compose several characters into one)."""
        limit = self.max_input_len * self.tokenizer.max_token_chars * 4
        if len(text) > limit:
            raise bad_request(f"{field}: the prompt has {len(text)} characters, more than "
                              f"max_input_len={self.max_input_len} tokens can hold (at most "
                              f"{limit} characters with this tokenizer); shorten it")

    def check_length(self, prompt_ids: list[int], max_new_tokens: int, field: str) -> None:
        if not prompt_ids:
            raise bad_request(f"{field}: the prompt is empty")
        if len(prompt_ids) > self.max_input_len:
            raise bad_request(f"{field}: the prompt has {len(prompt_ids)} tokens, over this "
                              f"model's max_input_len={self.max_input_len}; shorten it")
        total = len(prompt_ids) + max_new_tokens
        if total > self.max_model_len:
            raise bad_request(
                f"{field}: the prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens "
                f"is {total} tokens, over this model's limit max_model_len={self.max_model_len}; "
                "shorten the prompt or ask for fewer tokens")

    def generation(self, request_id: str, prompt_ids: list[int],
                   sampling: protocol.SamplingParams, stops: list[str],
                   adapter: str | None = None) -> Generation:
        return Generation(self.client, self.tokenizer, engine_request_id(request_id), prompt_ids,
                          sampling, stops, adapter=self.adapter if adapter is None else adapter)


def _first_piece(generation: Generation):
    """Start the request and wait for its first piece, so early errors keep their status."""
    pieces = generation.pieces()
    try:
        first = next(pieces)
    except StopIteration:
        first = None
    return pieces, first


def _chain(first, pieces):
    if first is not None:
        yield first
    yield from pieces


def _frame(line: dict, sse: bool) -> bytes:
    """One streamed line: a server-sent event, or a JSON line."""
    data = json.dumps(line, ensure_ascii=False)
    return (f"data: {data}\n\n" if sse else data + "\n").encode("utf-8")


def _openai_chunk(envelope: dict, choice: dict, usage: dict | None, sse: bool) -> bytes:
    """A streamed OpenAI chunk: one choice, or (the last, with include_usage) only the usage."""
    body = dict(envelope, choices=[] if usage else [choice])
    if usage:
        body["usage"] = usage
    return _frame(body, sse)


def _errors_as_last_line(body_iter, sse: bool):
    """Once streaming has begun the status is sent: an error becomes the stream's last line,
    {"code", "type", "message", "error"}, so clients see why it ended."""
    try:
        yield from body_iter
    except ServingError as error:
        yield _frame(dict(error.body(), error=error.message), sse)


def _streaming_response(body_iter, mimetype: str) -> Response:
    body_iter = _errors_as_last_line(body_iter, mimetype == "text/event-stream")
    response = Response(body_iter, mimetype=mimetype, direct_passthrough=True)
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _usage_headers(response: Response, results: list[Result]) -> Response:
    response.headers["X-Prompt-Tokens"] = str(sum(r.prompt_tokens for r in results))
    response.headers["X-Generated-Tokens"] = str(sum(r.generated_tokens for r in results))
    return response


# LMI ---------------------------------------------------------------------------------------------
def _lmi_sampling(ctx: LlmContext, p) -> protocol.SamplingParams:
    vocab = int(ctx.info["vocab_size"])
    if any(t >= vocab for t in p.stop_token_ids):
        raise bad_request(f"parameters.stop_token_ids: token ids must be in [0, {vocab})")
    return protocol.SamplingParams(
        max_new_tokens=p.max_new_tokens, do_sample=p.do_sample and p.temperature > 0,
        temperature=p.temperature, top_k=max(p.top_k, 0), top_p=p.top_p,
        typical_p=p.typical_p, min_p=p.min_p, presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty, stop_token_ids=list(p.stop_token_ids),
        min_tokens=p.min_tokens, repetition_penalty=p.repetition_penalty, seed=p.seed,
        ignore_eos=p.ignore_eos, logprobs=p.details,
        top_logprobs=p.top_n_tokens if p.details else 0,
        prompt_logprobs=0 if p.details and p.decoder_input_details else -1,
        structured=structured_from(p.model_dump(include=STRUCTURED_FIELDS), "parameters."))


def _lmi_token(token, text: str) -> dict:
    return {"id": token.id, "text": text, "log_prob": token.log_prob, "special": token.special}


def _lmi_details(result: Result, tokenizer, params, prompt_ids) -> dict:
    details = {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "inputs_tokens": result.prompt_tokens,
        "cached_tokens": result.cached_tokens,
        "tokens": [_lmi_token(t, t.text) for t in result.tokens],
    }
    if params.top_n_tokens:
        details["top_tokens"] = [lmi_top_tokens(tokenizer, t, params.top_n_tokens)
                                 for t in result.tokens]
    if params.decoder_input_details:
        details["prefill"] = lmi_prefill(tokenizer, prompt_ids, result)
    return details


def _lmi_result(result: Result, prompt: str, params, tokenizer=None, prompt_ids=None) -> dict:
    text = prompt + result.text if params.return_full_text else result.text
    out = {"generated_text": text}
    if params.details:
        out["details"] = _lmi_details(result, tokenizer, params, prompt_ids)
    return out


def lmi(ctx: LlmContext, payload, request_id: str) -> Response:
    req = validate(LmiRequest, payload)
    params = req.parameters
    prompts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    ctx.check_count(len(prompts), "inputs")
    if req.stream and len(prompts) > 1:
        raise bad_request("inputs: stream=true takes one input, not a list")
    if req.stream and params.decoder_input_details:
        raise bad_request("parameters.decoder_input_details: not with stream=true")
    sampling = _lmi_sampling(ctx, params)
    check_engine_fields(ctx, sampling)
    adapters = lmi_adapters(ctx.info, ctx.model_name, req.adapters, len(prompts), ctx.adapter)
    generations, all_ids = [], []
    for index, prompt in enumerate(prompts):
        field = "inputs" if len(prompts) == 1 else f"inputs.{index}"
        if not params.truncate:
            ctx.check_text(prompt, field)
        ids = ctx.tokenizer.encode(prompt)
        if params.truncate:
            ids = ids[-params.truncate:]
        ctx.check_length(ids, params.max_new_tokens, field)
        rid = request_id if len(prompts) == 1 else f"{request_id}-{index}"
        generations.append(ctx.generation(rid, ids, sampling, params.stop_sequences,
                                          adapters[index]))
        all_ids.append(ids)
    if not req.stream:
        results = wait_all(generations)
        bodies = [_lmi_result(r, p, params, ctx.tokenizer, ids)
                  for r, p, ids in zip(results, prompts, all_ids)]
        payload = bodies[0] if isinstance(req.inputs, str) else bodies
        response = Response(json.dumps(payload, ensure_ascii=False), mimetype="application/json")
        return _usage_headers(response, results)
    formatter = ctx.config.option("output_formatter") or "jsonlines"
    if formatter == "json":
        formatter = "jsonlines"
    generation = generations[0]
    pieces, first = _first_piece(generation)
    sse = formatter == "sse"

    def lines():
        for piece in _chain(first, pieces):
            for i, token in enumerate(piece.tokens):
                last_of_piece = i == len(piece.tokens) - 1
                line = {"token": _lmi_token(token, piece.text if last_of_piece else "")}
                if params.details and params.top_n_tokens:
                    line["top_tokens"] = lmi_top_tokens(ctx.tokenizer, token, params.top_n_tokens)
                if generation.done and last_of_piece:
                    final = _lmi_result(generation.result, prompts[0], params, ctx.tokenizer,
                                        all_ids[0])
                    line["generated_text"] = final["generated_text"]
                    line["details"] = final.get("details")
                yield _frame(line, sse)

    return _streaming_response(lines(), "text/event-stream" if sse else "application/jsonlines")


# OpenAI ------------------------------------------------------------------------------------------
def _openai_sampling(ctx: LlmContext, req, max_tokens: int, logprobs: bool, top: int = 0,
                     prompt_logprobs: int = -1) -> protocol.SamplingParams:
    vocab = int(ctx.info["vocab_size"])
    bias = {int(k): float(v) for k, v in (req.logit_bias or {}).items()}
    for field, ids in (("logit_bias", bias), ("stop_token_ids", req.stop_token_ids)):
        if any(t >= vocab for t in ids):
            raise bad_request(f"{field}: token ids must be in [0, {vocab})")
    return protocol.SamplingParams(
        max_new_tokens=max_tokens, do_sample=req.temperature > 0, temperature=req.temperature,
        top_k=max(req.top_k, 0), top_p=req.top_p, min_p=req.min_p,
        repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, logit_bias=bias, min_tokens=req.min_tokens,
        stop_token_ids=list(req.stop_token_ids), seed=req.seed, ignore_eos=req.ignore_eos,
        logprobs=logprobs, top_logprobs=top, prompt_logprobs=prompt_logprobs,
        structured=structured_from(req.model_dump(include=STRUCTURED_FIELDS)))


# What only the native engine's sampler and step plan implement (DeepSpeed and TensorRT-LLM
# serve the original LMI fields): elsewhere each is a 400 rather than silently ignored.
NATIVE_ONLY = {"top_logprobs": "top_logprobs / top_n_tokens / logprobs > 0",
               "prompt_logprobs": "echo with logprobs / decoder_input_details",
               "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
               "logit_bias": "logit_bias", "min_tokens": "min_tokens", "min_p": "min_p",
               "typical_p": "typical_p", "structured": "structured output / tool_choice"}
_DEFAULTS = protocol.SamplingParams()


def check_engine_fields(ctx: LlmContext, sampling: protocol.SamplingParams) -> None:
    engine = ctx.info.get("engine", "native")
    if engine == "native":
        return
    for name, described in NATIVE_ONLY.items():
        if getattr(sampling, name) != getattr(_DEFAULTS, name):
            raise bad_request(f"{described}: not supported by engine {engine}; the native "
                              "engine implements it")


def _samples(ctx: LlmContext, request_id: str, ids: list[int], sampling, stops: list[str],
             count: int, discard_output: bool = False,
             kept_special: dict[int, str] | None = None) -> list[Generation]:
    """`count` generations of one prompt; a seeded request gives sample i the seed + i, so the
    samples differ yet the response is reproducible."""
    check_engine_fields(ctx, sampling)
    out = []
    for i in range(count):
        params = sampling
        if i and sampling.seed is not None:
            params = msgspec.structs.replace(sampling, seed=(sampling.seed + i) % (2**63))
        rid = request_id if count == 1 else f"{request_id}-s{i}"
        out.append(Generation(ctx.client, ctx.tokenizer, engine_request_id(rid), ids, params,
                              stops, discard_output, kept_special,
                              adapter=ctx.adapter))
    return out


def _best(results: list[Result], n: int) -> list[Result]:
    """best_of: the n samples with the highest cumulative log-prob, best first."""
    if len(results) == n:
        return results
    return sorted(results, key=lambda r: r.cumulative_logprob, reverse=True)[:n]


def _run_groups(groups: list[list[Generation]]) -> list[list[Result]]:
    """Every prompt's samples concurrently (each group staggered, see generation.py)."""
    if len(groups) == 1:
        return [wait_all_staggered(groups[0])]
    jobs = [gevent.spawn(wait_all_staggered, g) for g in groups]
    gevent.joinall(jobs)
    for job in jobs:
        if job.exception is not None:
            for group in groups:
                for g in group:
                    if not g.done and g._box is not None:
                        g.client.abort(g.request_id)
            raise job.exception
    return [job.value for job in jobs]


def _usage(results: list[Result], prompt_tokens: int | None = None) -> dict:
    """prompt_tokens: counted once per prompt, however many samples it had."""
    prompt = prompt_tokens if prompt_tokens is not None else sum(r.prompt_tokens for r in results)
    completion = sum(r.generated_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in results)}}


def _check_samples(req, best_of: int) -> None:
    if best_of < req.n:
        raise bad_request(f"best_of: must be >= n ({req.n}), got {best_of}")
    if req.stream and best_of > req.n:
        raise bad_request("best_of: with stream=true, best_of must equal n")


def chat(ctx: LlmContext, payload, request_id: str, sse: bool) -> Response:
    req = validate(ChatCompletionRequest, payload)
    ctx.adapter = openai_adapter(ctx.info, ctx.model_name, req.model, ctx.adapter)
    try:
        messages = [m.template_dict() for m in req.messages]
    except ValueError as exc:
        raise bad_request(f"messages: {exc}") from None
    messages = template_messages(messages)
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs: needs logprobs=true")
    tools = ToolPlan(req.tools, req.tool_choice, req.parallel_tool_calls, ctx.tool_parser,
                     ctx.tool_parser_reason)
    offered = tools.template_tools()
    text = ctx.tokenizer.apply_chat_template(messages, **({"tools": offered} if offered else {}))
    ctx.check_text(text, "messages")
    ids = ctx.tokenizer.encode(text, add_special_tokens=False)     # as encode_chat does
    max_tokens = req.max_completion_tokens or req.max_tokens or max(
        ctx.max_model_len - len(ids), 1)
    ctx.check_length(ids, max_tokens, "messages")
    ctx.check_count(req.n, "n")
    sampling = _openai_sampling(ctx, req, max_tokens, req.logprobs, req.top_logprobs)
    if tools.grammar() is not None:
        if sampling.structured is not None:
            raise bad_request(f"tool_choice: {tools.choice!r} writes the calls through a "
                              "grammar, so it cannot be combined with response_format or "
                              "guided decoding")
        sampling = msgspec.structs.replace(sampling, structured=tools.grammar())
    generations = _samples(ctx, request_id, ids, sampling, req.stop, req.n,
                           kept_special=tools.marker_tokens(ctx.tokenizer))
    created = int(time.time())
    cid = f"chatcmpl-{request_id}"
    model = req.model or ctx.model_name
    tokenizer = TokenIdNames(ctx.tokenizer) if req.return_tokens_as_token_ids else ctx.tokenizer

    def logprobs_of(tokens):
        return chat_logprobs(tokenizer, tokens, req.top_logprobs) if req.logprobs else None

    if not req.stream:
        results = wait_all_staggered(generations)
        body = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [_chat_choice(i, r, tools, logprobs_of(r.tokens))
                        for i, r in enumerate(results)],
            "usage": _usage(results, len(ids)),
        }
        return _usage_headers(Response(json.dumps(body, ensure_ascii=False),
                                       mimetype="application/json"), results)
    pieces, first = _first_piece_merged(generations)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    envelope = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(index: int, delta: dict, finish=None, logprobs=None, usage=None) -> bytes:
        return _openai_chunk(envelope, {"index": index, "delta": delta, "logprobs": logprobs,
                                        "finish_reason": finish}, usage, sse)

    def events():
        # with tools, each sample's text goes through its incremental tool-call parser:
        # content streams as it comes, a call as its name and then pieces of its arguments
        parsers = [tools.stream() for _ in generations] if tools.active else None
        for index in range(len(generations)):
            yield chunk(index, {"role": "assistant", "content": ""})
        for index, piece in _chain(first, pieces):
            generation = generations[index]
            lp = logprobs_of(piece.tokens)
            if parsers is None:
                if piece.text or (lp and lp["content"]):
                    yield chunk(index, {"content": piece.text}, logprobs=lp)
            else:
                deltas = parsers[index].feed(piece.text)
                if generation.done:
                    deltas += parsers[index].finish()
                if not deltas and lp and lp["content"]:
                    deltas = [{"content": ""}]
                for number, delta in enumerate(deltas):
                    yield chunk(index, delta, logprobs=lp if number == 0 else None)
            if not generation.done:
                continue
            finish = OPENAI_FINISH.get(generation.result.finish_reason, "stop")
            if parsers is not None and parsers[index].calls and parsers[index].complete:
                finish = "tool_calls"
            yield chunk(index, {}, finish=finish)
        if include_usage:
            yield chunk(0, {}, usage=_usage([g.result for g in generations], len(ids)))
        if sse:
            yield b"data: [DONE]\n\n"

    return _streaming_response(events(), "text/event-stream" if sse else "application/jsonlines")


def _chat_choice(index: int, result: Result, tools: ToolPlan, logprobs) -> dict:
    content, calls = tools.calls(result.text) if tools.active else (result.text, [])
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls else OPENAI_FINISH.get(result.finish_reason, "stop")
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def _first_piece_merged(generations: list[Generation]):
    """As _first_piece, for (index, piece) of several samples."""
    pieces = merged_pieces(generations)
    try:
        first = next(pieces)
    except StopIteration:
        first = None
    return pieces, first


def completions(ctx: LlmContext, payload, request_id: str, sse: bool) -> Response:
    req = validate(CompletionRequest, payload)
    ctx.adapter = openai_adapter(ctx.info, ctx.model_name, req.model, ctx.adapter)
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts = [prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    best_of = req.best_of or req.n
    _check_samples(req, best_of)
    ctx.check_count(len(prompts) * best_of, "prompt")
    if req.stream and len(prompts) > 1:
        raise bad_request("prompt: stream=true takes one prompt, not a list")
    want_logprobs = req.logprobs is not None
    top = req.logprobs or 0
    # lm-evaluation-harness scores log-likelihoods with echo, logprobs and max_tokens 0 or 1
    sampling = _openai_sampling(ctx, req, max(req.max_tokens, 1),
                                want_logprobs or best_of > req.n, top,
                                top if (req.echo and want_logprobs) else -1)
    groups, texts, prompt_ids = [], [], []
    for index, item in enumerate(prompts):
        if isinstance(item, str):
            ctx.check_text(item, f"prompt.{index}")
        ids = ctx.tokenizer.encode(item) if isinstance(item, str) else list(item)
        if any(not isinstance(t, int) or t < 0 or t >= int(ctx.info["vocab_size"]) for t in ids):
            raise bad_request(f"prompt.{index}: token ids must be in [0, {ctx.info['vocab_size']})")
        texts.append(item if isinstance(item, str) else ctx.tokenizer.decode(ids))
        prompt_ids.append(ids)
        ctx.check_length(ids, max(req.max_tokens, 1), "prompt")
        rid = request_id if len(prompts) == 1 else f"{request_id}-{index}"
        groups.append(_samples(ctx, rid, ids, sampling, req.stop, best_of,
                               discard_output=req.max_tokens == 0))
    created = int(time.time())
    cid = f"cmpl-{request_id}"
    model = req.model or ctx.model_name

    names = TokenIdNames(ctx.tokenizer) if req.return_tokens_as_token_ids else ctx.tokenizer

    def logprobs_of(result: Result, index: int, echo: bool):
        if not want_logprobs:
            return None
        offset = 0 if echo else len(texts[index])
        return completion_logprobs(names, result, top,
                                   prompt_ids[index] if echo else None, offset)

    if not req.stream:
        grouped = _run_groups(groups)
        choices, everything = [], []
        for index, results in enumerate(grouped):
            everything += results
            for r in _best(results, req.n):
                choices.append({
                    "index": len(choices), "text": (texts[index] if req.echo else "") + r.text,
                    "logprobs": logprobs_of(r, index, req.echo),
                    "finish_reason": OPENAI_FINISH.get(r.finish_reason, "stop")})
        body = {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": choices, "usage": _usage(everything, sum(map(len, prompt_ids)))}
        return _usage_headers(Response(json.dumps(body, ensure_ascii=False),
                                       mimetype="application/json"), everything)
    generations = groups[0]
    pieces, first = _first_piece_merged(generations)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    envelope = {"id": cid, "object": "text_completion", "created": created, "model": model}

    def chunk(index: int, text: str, finish=None, logprobs=None, usage=None) -> bytes:
        return _openai_chunk(envelope, {"index": index, "text": text, "logprobs": logprobs,
                                        "finish_reason": finish}, usage, sse)

    def events():
        echoed = set()
        for index, piece in _chain(first, pieces):
            generation = generations[index]
            if req.echo and index not in echoed:      # the prompt's log-probs are here now
                echoed.add(index)
                prompt_only = Result("", "length", prompt_logprobs=generation.result
                                     .prompt_logprobs, prompt_top_logprobs=generation.result
                                     .prompt_top_logprobs)
                yield chunk(index, texts[0], logprobs=completion_logprobs(
                    ctx.tokenizer, prompt_only, top, prompt_ids[0]) if want_logprobs else None)
            if piece.text or (want_logprobs and piece.tokens):
                lp = completion_logprobs(names, Result("", "length", tokens=piece.tokens),
                                         top, None) if want_logprobs else None
                yield chunk(index, piece.text, logprobs=lp)
            if generation.done:
                yield chunk(index, "", finish=OPENAI_FINISH.get(generation.result.finish_reason,
                                                                "stop"))
        if include_usage:
            yield chunk(0, "", usage=_usage([g.result for g in generations], len(prompt_ids[0])))
        if sse:
            yield b"data: [DONE]\n\n"

    return _streaming_response(events(), "text/event-stream" if sse else "application/jsonlines")


# routing -----------------------------------------------------------------------------------------
def invocations(client: EngineClient, config, request_id: str) -> Response:
    from .custom_formatters import formatted_lmi, formatted_payload, load_formatters

    ctx = LlmContext(client, config)
    payload = parse_json_body(request.get_data(cache=False))
    formatters = load_formatters(config.model_dir)
    payload = formatted_payload(formatters, payload, ctx.tokenizer)
    if (formatters.output_formatter and isinstance(payload, dict) and "inputs" in payload
            and "messages" not in payload):
        return formatted_lmi(ctx, payload, request_id, formatters.output_formatter)
    if isinstance(payload, dict) and "messages" in payload:
        sse = (config.option("output_formatter") == "sse")
        return chat(ctx, payload, request_id, sse=sse)
    if isinstance(payload, dict) and "prompt" in payload and "inputs" not in payload:
        return completions(ctx, payload, request_id, sse=config.option("output_formatter") == "sse")
    if not isinstance(payload, dict):
        raise bad_request("body: must be a JSON object with \"inputs\" (or \"messages\")")
    return lmi(ctx, payload, request_id)


def register_openai_routes(app, client_getter, config) -> None:
    from flask import g

    @app.post("/v1/chat/completions")
    def openai_chat():
        ctx = LlmContext(client_getter(), config)
        return chat(ctx, _object_body(), g.request_id, sse=True)

    @app.post("/v1/completions")
    def openai_completions():
        ctx = LlmContext(client_getter(), config)
        return completions(ctx, _object_body(), g.request_id, sse=True)

    @app.get("/v1/models")
    def openai_models():
        return Response(json.dumps({"object": "list", "data": [{
            "id": config.model_name, "object": "model", "created": 0, "owned_by": "serve"}]}),
            mimetype="application/json")


def _object_body() -> dict:
    payload = parse_json_body(request.get_data(cache=False))
    if not isinstance(payload, dict):
        raise bad_request("body: must be a JSON object")
    return payload
