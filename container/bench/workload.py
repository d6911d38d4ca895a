"""Prompts of a given token length: random token ids decoded into text (as vllm bench's
random dataset does), re-encoded and trimmed so each prompt really has input_len tokens."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Prompt:
    text: str
    token_ids: list[int]
    output_len: int
    adapter: str | None = None      # LoRA adapter the request names (None: the base model)


def random_prompts(tokenizer_dir: str | None, count: int, input_len: int, output_len: int,
                   seed: int = 0, vary: float = 0.0) -> list[Prompt]:
    """`vary` > 0 draws lengths uniformly in [len*(1-vary), len*(1+vary)]."""
    rng = random.Random(seed)
    if tokenizer_dir is None:
        return [_word_prompt(rng, _jitter(rng, input_len, vary), _jitter(rng, output_len, vary))
                for _ in range(count)]
    from ..text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(tokenizer_dir)
    vocab = tokenizer.tokenizer.get_vocab_size()
    special = tokenizer.special_ids
    prompts = []
    for _ in range(count):
        length = _jitter(rng, input_len, vary)
        ids = [rng.randrange(vocab) for _ in range(length)]
        for _ in range(4):                               # decode/encode until it is stable
            ids = [t for t in ids if t not in special]
            text = tokenizer.decode(ids)
            ids = tokenizer.encode(text, add_special_tokens=False)
            while len(ids) < length:
                ids.append(rng.randrange(vocab))
            ids = ids[:length]
        text = tokenizer.decode(ids)
        prompts.append(Prompt(text, tokenizer.encode(text, add_special_tokens=False),
                              _jitter(rng, output_len, vary)))
    return prompts


def _jitter(rng: random.Random, value: int, vary: float) -> int:
    if vary <= 0:
        return value
    return max(1, rng.randint(int(value * (1 - vary)), int(value * (1 + vary))))


def _word_prompt(rng: random.Random, length: int, output_len: int) -> Prompt:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "india"]
    return Prompt(" ".join(rng.choice(words) for _ in range(length)), [], output_len)
