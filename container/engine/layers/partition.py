"""Balanced split of a dimension across tensor-parallel ranks (shares differ by one unit at most).

Uneven splits keep models like SmolLM2 (9 heads, 3 KV heads) servable at TP=2: each rank
takes whole KV-head groups and the row-parallel sum is correct for any partition.
"""

from __future__ import annotations


def partition(total_units: int, parts: int, rank: int) -> tuple[int, int]:
    """(start, count) of rank's share of total_units."""
    base, extra = divmod(total_units, parts)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def padded_share(total: int, parts: int) -> int:
    """Equal share with padding (for the vocabulary, which all-gather needs equal)."""
    return -(-total // parts)
