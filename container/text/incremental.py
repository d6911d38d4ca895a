"""Text of a generation as its tokens arrive: incremental decoding plus stop sequences.

Decoding uses tokenizers' DecodeStream, primed with the end of the prompt so the first
generated word keeps its leading space (SentencePiece-style tokenizers drop it otherwise) and
multi-byte characters split across tokens come out whole. Text that might be the start of a
stop sequence is held back until it is known not to be one, so the streamed pieces always
concatenate exactly to the final text, which ends before the stop sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from .tokenizer import TextTokenizer

PROMPT_CONTEXT_TOKENS = 6


@dataclass
class TextUpdate:
    text: str                 # newly released text (may be empty)
    stopped: bool = False     # a stop sequence was found; generation should end


class IncrementalText:
    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int],
                 stop_sequences: list[str] | None = None,
                 kept_special: dict[int, str] | None = None):
        """kept_special: special tokens whose text stays in the output (a tool-call marker
        such as Mistral's [TOOL_CALLS], which the parser must see); others are skipped."""
        self.tokenizer = tokenizer.tokenizer
        self.kept_special = kept_special or {}
        context = [t for t in prompt_ids[-PROMPT_CONTEXT_TOKENS:]
                   if t not in tokenizer.special_ids]
        self.stream = DecodeStream(ids=context, skip_special_tokens=True) if context else \
            DecodeStream(skip_special_tokens=True)
        self.stops = [s for s in (stop_sequences or []) if s]
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.released = ""
        self.pending = ""
        self.stopped = False
        self.undecoded: list[int] = []    # ids the stream holds back (an incomplete character)

    def add(self, token_ids: list[int]) -> TextUpdate:
        if self.stopped:
            return TextUpdate("", True)
        for token in token_ids:
            piece = self.stream.step(self.tokenizer, token)
            if token in self.kept_special:
                self.undecoded = []
                self.pending += (piece or "") + self.kept_special[token]
            elif piece is None:
                self.undecoded.append(token)
            else:
                self.undecoded = []
                self.pending += piece
        if not self.stops:
            return TextUpdate(self._release(len(self.pending)))
        full = self.released + self.pending
        window = max(0, len(self.released) - self.longest_stop + 1)
        found = [i for i in (full.find(s, window) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            end = min(found) - len(self.released)
            return TextUpdate(self._release(max(end, 0), drop_rest=True), True)
        return TextUpdate(self._release(len(self.pending) - self._hold_back(full)))

    def finish(self) -> str:
        """The generation ended: release what was held back. Bytes of a character that never
        completed come out as U+FFFD, as a whole-sequence decode would show them."""
        if self.undecoded and not self.stopped:
            self.pending += self.tokenizer.decode(self.undecoded, skip_special_tokens=True)
            self.undecoded = []
        return self._release(len(self.pending))

    @property
    def text(self) -> str:
        return self.released

    def _hold_back(self, full: str) -> int:
        """Length of the longest end of `full` that begins some stop sequence."""
        for size in range(min(self.longest_stop - 1, len(self.pending)), 0, -1):
            tail = full[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def _release(self, count: int, drop_rest: bool = False) -> str:
        out, self.pending = self.pending[:count], ("" if drop_rest else self.pending[count:])
        self.released += out
        return out
