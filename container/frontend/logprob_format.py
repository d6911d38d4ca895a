"""Log-probabilities in each API's shape: OpenAI completions and chat, LMI details.

The engine sends (token id, log-prob) pairs; these turn them into text keyed or listed entries.
A token's own text is tokenizer.token_text (what it adds to the decoded text).
"""

from __future__ import annotations

from .generation import Result, TokenInfo


def _text(tokenizer, token_id: int) -> str:
    return tokenizer.token_text(token_id)


class TokenIdNames:
    """vLLM's return_tokens_as_token_ids: a tokenizer stand-in that names every token
    "token_id:N" (a token's text can be ambiguous: part of a character, or shared by ids)."""

    def __init__(self, tokenizer):
        self.special_ids = tokenizer.special_ids

    @staticmethod
    def token_text(token_id: int) -> str:
        return f"token_id:{token_id}"


def _top_dict(tokenizer, own: tuple[int, float] | None, top) -> dict[str, float]:
    """OpenAI completions: {token text: log-prob} of the top k, plus the token itself (as
    vLLM does), so `max(top.values())` equals the token's log-prob exactly when it is the
    model's greedy choice."""
    out: dict[str, float] = {}
    for token_id, value in top or ():
        out.setdefault(_text(tokenizer, token_id), value)
    if own is not None:
        out.setdefault(_text(tokenizer, own[0]), own[1])
    return out


def completion_logprobs(tokenizer, result: Result, k: int, prompt_ids: list[int] | None,
                        offset: int = 0) -> dict:
    """{"tokens", "token_logprobs", "top_logprobs", "text_offset"}; prompt_ids (echo): the
    prompt's tokens first, its first token with None (nothing scores it)."""
    tokens, values, tops = [], [], []
    if prompt_ids is not None:
        scored = result.prompt_logprobs or []
        top = result.prompt_top_logprobs or [[] for _ in scored]
        for i, token_id in enumerate(prompt_ids):
            tokens.append(_text(tokenizer, token_id))
            if i == 0 or i - 1 >= len(scored):
                values.append(None)
                tops.append(None)
                continue
            values.append(scored[i - 1])
            tops.append(_top_dict(tokenizer, (token_id, scored[i - 1]), top[i - 1][:k]))
    for token in result.tokens:
        tokens.append(_text(tokenizer, token.id))
        values.append(token.log_prob)
        tops.append(_top_dict(tokenizer, (token.id, token.log_prob), (token.top or [])[:k]))
    offsets, cursor = [], offset
    for text in tokens:
        offsets.append(cursor)
        cursor += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


def _chat_entry(text: str, value: float) -> dict:
    return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, tokens: list[TokenInfo], k: int) -> dict:
    return {"content": [dict(_chat_entry(_text(tokenizer, t.id), t.log_prob), top_logprobs=[
        _chat_entry(_text(tokenizer, i), v) for i, v in (t.top or [])[:k]]) for t in tokens]}


def lmi_top_tokens(tokenizer, token: TokenInfo, k: int) -> list[dict]:
    return [{"id": i, "text": _text(tokenizer, i), "log_prob": v,
             "special": i in tokenizer.special_ids} for i, v in (token.top or [])[:k]]


def lmi_prefill(tokenizer, prompt_ids: list[int], result: Result) -> list[dict]:
    """details.prefill: every prompt token, the first with log_prob None (as TGI)."""
    scored = result.prompt_logprobs or []
    return [{"id": t, "text": _text(tokenizer, t),
             "log_prob": scored[i - 1] if 0 < i <= len(scored) else None}
            for i, t in enumerate(prompt_ids)]
