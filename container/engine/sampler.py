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
    penalty_tokens: torch.Tensor | None = None   # [B, L] int64, -1 padded (prompt + output)
    all_greedy: bool = True
    any_top_k: bool = False
    any_top_p: bool = False
    want_logprobs: bool = False
    min_p: torch.Tensor | None = None            # [B] float32, 0 = off
    typical_p: torch.Tensor | None = None        # [B] float32, 1 = off
    presence: torch.Tensor | None = None         # [B] float32 (OpenAI presence_penalty)
    frequency: torch.Tensor | None = None        # [B] float32
    output_tokens: torch.Tensor | None = None    # [B, L] int64, -1 padded (output only)
    bias: torch.Tensor | None = None             # [3, N] float32: row, token id, added value
    num_top_logprobs: int = 0                    # the batch's largest top_logprobs
    token_bitmask: torch.Tensor | None = None    # [B, ceil(V/32)] int32: grammar masks

    @property
    def plain_greedy(self) -> bool:
        """Every row takes the raw argmax and wants nothing else: the decode graph's own
        argmax will do."""
        return (self.all_greedy and self.penalty_tokens is None and self.output_tokens is None
                and self.bias is None and not self.want_logprobs and self.token_bitmask is None)

    @classmethod
    def build(cls, rows: list[dict], device: torch.device) -> "SamplingBatch":
        """rows: dicts from sampling_row (tests may leave out the keys that are off).

        Greedy batches with no logit processors need no per-row tensors at all. Otherwise the
        columns go over in pinned, asynchronous copies: a pageable copy would make the CPU wait
        for the GPU's queued work and stall the overlapped steps."""
        get = _getter(rows)
        all_greedy = all(r["temperature"] == 0 for r in rows)
        penalties = any(r["repetition_penalty"] != 1.0 for r in rows)
        want_logprobs = any(r["logprobs"] for r in rows)
        num_top = max(get("top_logprobs", 0))
        counted = any(p != 0 or f != 0 for p, f in zip(get("presence_penalty", 0.0),
                                                        get("frequency_penalty", 0.0)))
        bias_entries = [(i, token, value) for i, r in enumerate(rows)
                        for token, value in r.get("bias", ())]
        bias = _to_device(list(zip(*bias_entries)), torch.float32, device) \
            if bias_entries else None
        if all_greedy and not penalties and not counted:
            return cls(None, None, None, None, None, None, all_greedy=True, bias=bias,
                       want_logprobs=want_logprobs, num_top_logprobs=num_top)
        floats = _to_device([[r["temperature"], r["top_p"], r["repetition_penalty"],
                              r.get("min_p", 0.0), r.get("typical_p", 1.0),
                              r.get("presence_penalty", 0.0), r.get("frequency_penalty", 0.0)]
                             for r in rows], torch.float32, device)
        ints = _to_device([[r["top_k"], r["seed"], r["step"]] for r in rows], torch.int64, device)
        sampled = [r["temperature"] > 0 for r in rows]
        return cls(
            temperature=floats[:, 0], top_k=ints[:, 0], top_p=floats[:, 1],
            repetition_penalty=floats[:, 2], seed=ints[:, 1], step=ints[:, 2],
            penalty_tokens=_padded([r["tokens"] for r in rows], device) if penalties else None,
            all_greedy=all_greedy,
            any_top_k=any(r["top_k"] > 0 and s for r, s in zip(rows, sampled)),
            any_top_p=any(r["top_p"] < 1.0 and s for r, s in zip(rows, sampled)),
            want_logprobs=want_logprobs,
            min_p=floats[:, 3] if any(m > 0 and s for m, s in zip(get("min_p", 0.0), sampled))
            else None,
            typical_p=floats[:, 4] if any(t < 1 and s for t, s in zip(get("typical_p", 1.0),
                                                                     sampled)) else None,
            presence=floats[:, 5] if counted else None,
            frequency=floats[:, 6] if counted else None,
            output_tokens=_padded([r.get("output", []) for r in rows], device) if counted
            else None,
            bias=bias, num_top_logprobs=num_top,
        )


def _getter(rows: list[dict]):
    return lambda key, default: [r.get(key, default) for r in rows]


def _padded(lists: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(max(len(x) for x in lists), 1)
    return _to_device([x + [-1] * (width - len(x)) for x in lists], torch.int64, device)


def sampling_row(params, seed: int, step: int, tokens: Callable[[], list[int]],
                 eos_token_ids=()) -> dict:
    """One request's row for SamplingBatch.build (any engine); `tokens` (prompt and output so
    far) is only called when a penalty needs it. Until min_tokens are out, EOS and
    stop_token_ids get a bias of -inf (eos_token_ids: the engine's)."""
    greedy = not params.do_sample or params.temperature == 0
    counted = params.presence_penalty != 0 or params.frequency_penalty != 0
    history = tokens() if params.repetition_penalty != 1.0 or counted else []
    bias = [(int(t), float(v)) for t, v in params.logit_bias.items()]
    if step < params.min_tokens:
        bias += [(int(t), float("-inf")) for t in {*eos_token_ids, *params.stop_token_ids}]
    return {
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_k": int(params.top_k),
        "top_p": float(params.top_p),
        "min_p": float(params.min_p),
        "typical_p": float(params.typical_p),
        "repetition_penalty": float(params.repetition_penalty),
        "presence_penalty": float(params.presence_penalty),
        "frequency_penalty": float(params.frequency_penalty),
        "seed": seed,
        "step": step,
        "tokens": history if params.repetition_penalty != 1.0 else [],
        "output": history[len(history) - step:] if counted and step else [],
        "bias": bias,
        "logprobs": params.logprobs or params.top_logprobs > 0,
        "top_logprobs": int(params.top_logprobs) if params.logprobs else 0,
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
    # 23 bits: (2**23 - 0.5) / 2**23 is still below 1 in float32, where 24 bits round the top
    # value up to 1.0; -log(1) = 0 then made the race divide by zero, and a token of zero
    # probability (masked, outside top-k) could win as NaN.
    return ((x >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


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


def apply_counted_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """OpenAI's presence and frequency penalties, over the tokens generated so far."""
    if batch.output_tokens is None:
        return logits
    rows, vocab = logits.shape
    counts = torch.zeros(rows, vocab + 1, dtype=logits.dtype, device=logits.device)
    index = batch.output_tokens.masked_fill(batch.output_tokens < 0, vocab)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=logits.dtype))
    counts = counts[:, :vocab]
    return (logits - batch.frequency.unsqueeze(1) * counts
            - batch.presence.unsqueeze(1) * (counts > 0).to(logits.dtype))


def apply_bias(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logit_bias, and the -inf of tokens a row may not take yet (min_tokens)."""
    if batch.bias is None:
        return logits
    rows, tokens, values = batch.bias[0].long(), batch.bias[1].long(), batch.bias[2]
    return logits.index_put((rows, tokens), values, accumulate=True)


def apply_token_mask(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Structured output: tokens the row's grammar does not allow next get -inf."""
    if batch.token_bitmask is None:
        return logits
    from .structured import allowed_tokens

    allowed = allowed_tokens(batch.token_bitmask.to(logits.device, non_blocking=True),
                             logits.shape[1])
    return logits.masked_fill(~allowed, float("-inf"))


def filter_min_p_typical(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """min_p (drop tokens below min_p times the top probability) and typical_p (keep the
    tokens whose surprise is closest to the entropy, up to typical_p of the mass)."""
    if batch.min_p is not None:
        probs = logits.softmax(dim=1)
        floor = batch.min_p.unsqueeze(1) * probs.max(dim=1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if batch.typical_p is not None:
        logp = logits.log_softmax(dim=1)
        p = logp.exp()
        entropy = -(p * logp.nan_to_num(neginf=0.0)).sum(dim=1, keepdim=True)
        distance = (-logp - entropy).abs()
        order = distance.argsort(dim=1)
        mass = p.gather(1, order).cumsum(dim=1)
        before = mass - p.gather(1, order)
        on = (batch.typical_p < 1.0).unsqueeze(1)
        remove_sorted = on & (before >= batch.typical_p.unsqueeze(1))
        remove_sorted[:, 0] = False
        remove = torch.zeros_like(remove_sorted).scatter_(1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


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


def _choose(logits: torch.Tensor, batch: SamplingBatch):
    """(tokens [B], raw log-softmax [B, V] or None)."""
    tokens, raw_logprobs, _ = choose_with_probs(logits, batch)
    return tokens, raw_logprobs


def choose_with_probs(logits: torch.Tensor, batch: SamplingBatch):
    """(tokens [B], raw log-softmax [B, V] or None, probs [B, V] or None): probs is the
    distribution each sampled row drew from, after every processor (None when the whole
    batch is greedy; greedy rows of a mixed batch hold a distribution they did not use).
    Speculative verification needs it to weigh draft tokens."""
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.want_logprobs else None
    logits = apply_repetition_penalty(logits, batch)
    logits = apply_counted_penalties(logits, batch)
    logits = apply_bias(logits, batch)
    logits = apply_token_mask(logits, batch)
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        return greedy, raw_logprobs, None
    temperature = batch.temperature.clamp(min=1e-5).unsqueeze(1)
    scaled = filter_min_p_typical(filter_top_k_top_p(logits / temperature, batch), batch)
    probs = scaled.softmax(dim=-1)
    noise = uniform_noise(batch.seed, batch.step, logits.shape[1])
    drawn = (probs / -torch.log(noise)).argmax(dim=-1)
    return torch.where(batch.temperature > 0, drawn, greedy), raw_logprobs, probs


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [B, V] -> (token ids [B] int64, log-probabilities of those tokens [B] or None)."""
    tokens, raw_logprobs = _choose(logits, batch)
    chosen = None
    if raw_logprobs is not None:
        chosen = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, chosen


def sample_with_top(logits: torch.Tensor, batch: SamplingBatch):
    """(tokens [B], packed [B, 1 + 2k] float32 or None): each row's chosen log-prob, then the
    k best log-probs, then their token ids (exact in float32 below 2**24), so a step's
    log-probabilities come back in one copy."""
    tokens, raw_logprobs = _choose(logits, batch)
    if raw_logprobs is None:
        return tokens, None
    return tokens, pack_logprobs(raw_logprobs, tokens, batch.num_top_logprobs)


def pack_logprobs(logprobs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """[R, V] log-probs, [R] target ids -> [R, 1 + 2k]: target's log-prob, top-k values, ids."""
    chosen = logprobs.gather(1, targets.unsqueeze(1))
    if k == 0:
        return chosen
    values, ids = logprobs.topk(k, dim=1)
    return torch.cat([chosen, values, ids.to(torch.float32)], dim=1)


def unpack_logprobs(row: list[float], k: int) -> tuple[float, list[tuple[int, float]]]:
    """A packed row on the host -> (target's log-prob, [(id, log-prob)] of the best k)."""
    width = (len(row) - 1) // 2
    values, ids = row[1:1 + width], row[1 + width:]
    return row[0], [(int(ids[j]), values[j]) for j in range(min(k, width))]
