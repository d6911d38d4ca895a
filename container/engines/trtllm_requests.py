"""One request between our protocol and TensorRT-LLM: sampling parameters in, progress out.

sampling_kwargs() maps protocol.SamplingParams onto TensorRT-LLM's SamplingParams fields;
read_progress() turns a streamed CompletionOutput into the new tokens since the last update and
our finish reason (length | eos_token | stop_sequence). Both are pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..workers.protocol import SamplingParams


def sampling_kwargs(p: SamplingParams, eos_token_ids: list[int]) -> dict:
    """Keyword arguments of tensorrt_llm.SamplingParams for one request."""
    kwargs = {
        "max_tokens": p.max_new_tokens,
        # The tokenizer is skipped (skip_tokenizer_init), so the end token must be given.
        "end_id": eos_token_ids[0],
        "pad_id": eos_token_ids[0],
        "ignore_eos": p.ignore_eos,
        "detokenize": False,
        # Keep a matched stop token in the output, as the native engine does.
        "include_stop_str_in_output": True,
    }
    stops = [] if p.ignore_eos else list(eos_token_ids[1:])   # e.g. Llama 3's several EOS ids
    stops += [t for t in p.stop_token_ids if t not in stops]
    if stops:
        kwargs["stop_token_ids"] = stops
    if not p.do_sample or p.temperature == 0:
        kwargs["top_k"] = 1          # greedy: TensorRT-LLM's sampler with one candidate
    else:
        kwargs["temperature"] = p.temperature
        if p.top_k > 0:
            kwargs["top_k"] = p.top_k
        if p.top_p < 1.0:
            kwargs["top_p"] = p.top_p
        if p.seed is not None:
            kwargs["seed"] = p.seed
    if p.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = p.repetition_penalty
    if p.logprobs:
        kwargs["logprobs"] = 1       # the sampled token's log-probability
    return kwargs


@dataclass
class Progress:
    new_token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None        # length | eos_token | stop_sequence | cancelled | ...
    sent: int                        # tokens reported so far, this update included


def read_progress(output, sent: int, eos_token_ids: list[int],
                  want_logprobs: bool) -> Progress:
    """What one streamed CompletionOutput adds after `sent` tokens were already reported."""
    token_ids = list(output.token_ids or [])
    new = token_ids[sent:]
    logprobs = None
    if want_logprobs:
        logprobs = [_logprob(entry, token) for entry, token in
                    zip((output.logprobs or [])[sent:sent + len(new)], new)]
        if len(logprobs) != len(new):
            logprobs = None          # the library sent none for these tokens
    return Progress(new, logprobs, finish_reason(output, eos_token_ids), sent + len(new))


def finish_reason(output, eos_token_ids: list[int]) -> str | None:
    reason = output.finish_reason
    if reason in (None, "length"):
        return reason
    if reason == "stop":
        # END_ID leaves stop_reason unset; a stop token id names itself.
        stop = output.stop_reason
        return "eos_token" if stop is None or stop in eos_token_ids else "stop_sequence"
    return str(reason)               # cancelled, timeout: the engine decides what they mean


def _logprob(entry, token: int) -> float:
    """A float (older TensorRT-LLM) or {token_id: Logprob} (newer), for the sampled token."""
    if isinstance(entry, dict):
        value = entry.get(token)
        if value is None and entry:
            value = next(iter(entry.values()))
        entry = getattr(value, "logprob", value)
    return float(entry)
