"""Structured output: grammars compiled once with xgrammar, one matcher per request, and
the step's token mask filled on the CPU for the rows that are constrained.

The mask is a bitmask [rows, ceil(vocab / 32)] int32 (bit set: token allowed); rows that are
free get every bit set, so a batch mixes constrained and free requests and the free ones
sample exactly as alone. A request's matcher advances by each token once it is read back,
so constrained requests run without overlapped steps (their next mask needs that token).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

import torch

from ..workers.protocol import StructuredOutput

log = logging.getLogger(__name__)


def choice_grammar(choices: list[str]) -> str:
    """EBNF accepting exactly one of the strings (JSON string escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


# xgrammar (0.2.8 and 0.2.9) writes strings with minLength / maxLength / pattern-free bounds as
# [^"\\\r\n]{m,n}, which admits the control characters JSON forbids in a string (a strict
# parser then rejects the output); its unbounded strings exclude them. We narrow the class.
_LOOSE_STRING_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def json_schema_grammar(schema: str) -> str:
    """The EBNF xgrammar derives from a JSON schema, with JSON's own string characters."""
    import xgrammar

    text = str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))
    return text.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


def compile_grammar(compiler, spec: StructuredOutput):
    """xgrammar's compiled grammar for a spec (the compiler keeps its own cache too)."""
    if spec.kind == "json_schema":
        return compiler.compile_grammar(json_schema_grammar(spec.spec))
    if spec.kind == "json_object":
        return compiler.compile_builtin_json_grammar()
    if spec.kind == "regex":
        return compiler.compile_regex(spec.spec)
    if spec.kind == "choice":
        return compiler.compile_grammar(choice_grammar(json.loads(spec.spec)))
    if spec.kind == "ebnf":
        return compiler.compile_grammar(spec.spec)
    raise ValueError(f"unknown structured output kind {spec.kind!r}")


class StructuredDecoding:
    def __init__(self, tokenizer_dir: str, vocab_size: int, eos_token_ids: list[int]):
        import xgrammar
        from transformers import AutoTokenizer

        self.xgr = xgrammar
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=list(eos_token_ids))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        self.vocab_size = vocab_size
        self._compiled = lru_cache(maxsize=256)(lambda spec: compile_grammar(self.compiler, spec))

    def matcher(self, spec: StructuredOutput):
        return self.xgr.GrammarMatcher(self._compiled(spec))

    def bitmask(self, matchers: list) -> torch.Tensor | None:
        """The step's mask for these rows (None where every row is free)."""
        if all(m is None for m in matchers):
            return None
        mask = self.xgr.allocate_token_bitmask(len(matchers), self.vocab_size)   # all allowed
        for row, matcher in enumerate(matchers):
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(mask, row)
        return mask


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, words] int32 bitmask -> [rows, vocab] bool."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()
