"""An ordered list of (key, value) pairs that allows repeated keys, as DJL's PairList."""

from __future__ import annotations


class PairList:
    def __init__(self, keys: list | None = None, values: list | None = None,
                 pair_list: list | None = None, pair_map: dict | None = None):
        self.keys: list = []
        self.values: list = []
        if keys is not None:
            if values is None or len(keys) != len(values):
                raise ValueError("key value size mismatch.")
            self.keys, self.values = list(keys), list(values)
        for key, value in pair_list or ():
            self.add(key, value)
        for key, value in (pair_map or {}).items():
            self.add(key, value)

    def add(self, key=None, value=None, index: int | None = None, pair: tuple | None = None):
        if pair is not None:
            key, value = pair
        if index is None:
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys.insert(index, key)
            self.values.insert(index, value)

    def add_all(self, other) -> None:
        """Append every pair of another PairList, a dict or an iterable of pairs."""
        pairs = other.items() if isinstance(other, dict) else other or ()
        for key, value in pairs:
            self.add(key, value)

    def size(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def key_at(self, index: int):
        return self.keys[index]

    def value_at(self, index: int):
        return self.values[index]

    def get(self, key):
        """The first value stored under key, or None."""
        for k, v in zip(self.keys, self.values):
            if k == key:
                return v
        return None

    def get_keys(self) -> list:
        return self.keys

    def get_values(self) -> list:
        return self.values

    def __iter__(self):
        return iter(zip(self.keys, self.values))

    def __repr__(self) -> str:
        return f"PairList({list(zip(self.keys, self.values))!r})"
