"""Next-token choice for every sequence that samples this step, with no host synchronisation.

Order, as transformers applies it: repetition penalty, then (when sampling) temperature,
top-k and top-p. Sampling is an exponential race (argmax of p / E with E ~ Exp(1)), which draws
exactly from p. Its random numbers come from a counter-based hash of (seed, output position,
token id) rather than a shared generator, so a seeded request gives the same text whatever
else is in the batch, and after a preemption. Log-probabilities are those of the model's raw
distribution (before penalty and temperature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingBatch:
    temperature: torch.Tensor | None   # [B] float32, 0 = greedy (None: every row greedy)
    top_k: torch.Tensor | None         # [B] int64, 0 = off
    top_p: torch.Tensor | None         # [B] float32, 1 = off
    repetition_penalty: torch.Tensor | None  # [B] float32, 1 = off
    seed: torch.Tensor | None          # [B] int64
    step: torch.Tensor | None          # [B] int64: output tokens so far
    penalty_tokens: torch.Tensor | None = None   # [B, L] int64, -1 padded
    all_greedy: bool = True
    any_top_k: bool = False
    any_top_p: bool = False
    want_logprobs: bool = False

    @classmethod
    def build(cls, rows: list[dict], device: torch.device) -> "SamplingBatch":
        """rows: dicts with temperature, top_k, top_p, repetition_penalty, seed, step,
        tokens (only read when a penalty applies), logprobs.

        Greedy batches need no per-row tensors at all. Otherwise the columns go over in one
        pinned, asynchronous copy: a pageable copy would make the CPU wait for the GPU's
        queued work and stall the overlapped steps."""
        all_greedy = all(r["temperature"] == 0 for r in rows)
        penalties = any(r["repetition_penalty"] != 1.0 for r in rows)
        want_logprobs = any(r["logprobs"] for r in rows)
        if all_greedy and not penalties:
            return cls(None, None, None, None, None, None, all_greedy=True,
                       want_logprobs=want_logprobs)
        floats = _to_device([[r["temperature"], r["top_p"], r["repetition_penalty"]] for r in rows],
                            torch.float32, device)
        ints = _to_device([[r["top_k"], r["seed"], r["step"]] for r in rows], torch.int64, device)
        penalty_tokens = None
        if penalties:
            width = max(len(r["tokens"]) for r in rows)
            penalty_tokens = _to_device([r["tokens"] + [-1] * (width - len(r["tokens"]))
                                         for r in rows], torch.int64, device)
        return cls(
            temperature=floats[:, 0], top_k=ints[:, 0], top_p=floats[:, 1],
            repetition_penalty=floats[:, 2], seed=ints[:, 1], step=ints[:, 2],
            penalty_tokens=penalty_tokens, all_greedy=all_greedy,
            any_top_k=any(r["top_k"] > 0 and r["temperature"] > 0 for r in rows),
            any_top_p=any(r["top_p"] < 1.0 and r["temperature"] > 0 for r in rows),
            want_logprobs=want_logprobs,
        )


def sampling_row(params, seed: int, step: int, tokens: Callable[[], list[int]]) -> dict:
    """One request's row for SamplingBatch.build (any engine); `tokens` (prompt and output so
    far) is only called when a repetition penalty needs it."""
    greedy = not params.do_sample or params.temperature == 0
    return {
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_k": int(params.top_k),
        "top_p": float(params.top_p),
        "repetition_penalty": float(params.repetition_penalty),
        "seed": seed,
        "step": step,
        "tokens": tokens() if params.repetition_penalty != 1.0 else [],
        "logprobs": params.logprobs,
    }


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, vocab] float32 in (0, 1), a pure function of (seed, step, token id)."""
    lo, hi = seed & _MASK32, (seed >> 32) & _MASK32
    key = _hash32(_hash32(_hash32(lo) ^ hi) ^ (step & _MASK32))
    ids = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    x = _hash32((key.unsqueeze(1) + ids * 0x9E3779B1) & _MASK32)
    x = _hash32(x ^ key.unsqueeze(1))
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def apply_repetition_penalty(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.penalty_tokens is None:
        return logits
    rows, vocab = logits.shape
    seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device)
    index = batch.penalty_tokens.masked_fill(batch.penalty_tokens < 0, vocab)
    seen.scatter_(1, index, True)
    seen = seen[:, :vocab]
    penalty = batch.repetition_penalty.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k_top_p(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Set logits outside each row's top-k and nucleus (top-p) to -inf."""
    if not (batch.any_top_k or batch.any_top_p):
        return logits
    vocab = logits.shape[1]
    ordered, order = logits.sort(dim=1, descending=True)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    remove = torch.zeros_like(ordered, dtype=torch.bool)
    if batch.any_top_k:
        k = batch.top_k.clamp(min=0)
        k = torch.where(k == 0, torch.full_like(k, vocab), k).clamp(max=vocab)
        kth = ordered.gather(1, (k - 1).unsqueeze(1))
        remove |= ordered < kth                      # ties at the k-th value stay, as in HF
    if batch.any_top_p:
        masked = ordered.masked_fill(remove, float("-inf"))
        probs = masked.softmax(dim=1)
        before = probs.cumsum(dim=1) - probs         # mass of the tokens ranked above
        nucleus_on = (batch.top_p < 1.0).unsqueeze(1)
        remove |= nucleus_on & (before >= batch.top_p.unsqueeze(1)) & (rank > 0)
    filtered = ordered.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, filtered)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [B, V] -> (token ids [B] int64, log-probabilities of those tokens [B] or None)."""
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.want_logprobs else None
    logits = apply_repetition_penalty(logits, batch)
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        tokens = greedy
    else:
        temperature = batch.temperature.clamp(min=1e-5).unsqueeze(1)
        scaled = filter_top_k_top_p(logits / temperature, batch)
        probs = scaled.softmax(dim=-1)
        noise = uniform_noise(batch.seed, batch.step, logits.shape[1])
        drawn = (probs / -torch.log(noise)).argmax(dim=-1)
        tokens = torch.where(batch.temperature > 0, drawn, greedy)
    chosen = None
    if raw_logprobs is not None:
        chosen = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, chosen
