"""Paged KV-cache blocks: allocation, reference counts and prefix caching.

A block holds block_size tokens of every layer's K and V. A full block is named by a chained
hash of all tokens up to its end, so two requests with the same prefix share those blocks
(ref-counted); the chain starts from the sequence's cache salt (its LoRA adapter's id), so
two adapters never share blocks. Freed blocks keep their contents and hash until reused: a later request (or a
preempted one coming back) can still hit them. Free blocks are reused oldest-freed first.
"""

from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free_blocks: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.seq_hashes: dict[str, list[int]] = {}      # request id -> hashes of its full blocks
        self.num_referenced = 0                          # blocks some sequence holds

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # prefix cache -----------------------------------------------------------------------------
    def _chain(self, seq: Sequence, count: int) -> list[int]:
        """Hashes of the first `count` full blocks of seq (extending what is memoised)."""
        hashes = self.seq_hashes.setdefault(seq.request_id, [])
        size = self.block_size
        while len(hashes) < count:
            i = len(hashes)
            previous = hashes[-1] if hashes else seq.cache_salt
            hashes.append(hash((previous, tuple(seq.token_ids[i * size:(i + 1) * size]))))
        return hashes[:count]

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding seq's leading tokens (at least one token is left to compute,
        so the step that reaches the end still produces logits)."""
        if not self.enable_prefix_caching:
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        found = []
        size = self.block_size
        for i, h in enumerate(self._chain(seq, limit)):
            block = self.hash_to_block.get(h)
            if block is None or self.block_tokens[block] != self._content(seq, i):
                break
            found.append(block)
        return found

    def _content(self, seq: Sequence, index: int) -> tuple:
        """What block `index` of seq holds: its tokens, under its adapter's salt."""
        size = self.block_size
        return (seq.cache_salt, *seq.token_ids[index * size:(index + 1) * size])

    def cost_of_cached(self, blocks: list[int]) -> int:
        """Free blocks that taking these cached blocks would consume."""
        return sum(1 for b in blocks if b in self.free_blocks)

    def take_cached(self, seq: Sequence, blocks: list[int]) -> None:
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
                self.num_referenced += 1
            self.ref_counts[block] += 1
            seq.block_ids.append(block)
        seq.num_computed_tokens = len(blocks) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens
        seq.num_published_blocks = len(blocks)

    # allocation -------------------------------------------------------------------------------
    def new_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids))

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        for _ in range(self.new_blocks_needed(seq, num_new_tokens)):
            block, _ = self.free_blocks.popitem(last=False)
            old = self.block_hash[block]
            if old is not None and self.hash_to_block.get(old) == block:
                del self.hash_to_block[old]
            self.block_hash[block] = None
            self.block_tokens[block] = None
            self.ref_counts[block] = 1
            self.num_referenced += 1
            seq.block_ids.append(block)

    def mark_computed(self, seq: Sequence) -> None:
        """Publish seq's blocks that became full of computed tokens to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_published_blocks:
            return
        hashes = self._chain(seq, full)
        size = self.block_size
        for i in range(seq.num_published_blocks, full):
            block = seq.block_ids[i]
            if self.block_hash[block] is not None:
                continue
            self.block_hash[block] = hashes[i]
            self.block_tokens[block] = self._content(seq, i)
            self.hash_to_block.setdefault(hashes[i], block)
        seq.num_published_blocks = full

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Release seq's trailing blocks beyond what num_tokens need (never published: they
        hold no computed full block)."""
        keep = max(self.blocks_for(num_tokens), seq.num_published_blocks)
        while len(seq.block_ids) > keep:
            block = seq.block_ids.pop()
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
                self.num_referenced -= 1

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks, tail first (tails are the least likely to be shared)."""
        for block in reversed(seq.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
                self.num_referenced -= 1
        seq.block_ids = []
        seq.num_published_blocks = 0
        self.seq_hashes.pop(seq.request_id, None)
