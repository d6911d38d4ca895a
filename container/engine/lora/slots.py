"""Each rank's adapter memory: host copies (LRU, max_cpu_loras) and what each device slot holds.

Rank 0 decides (registry.py); every rank applies the same decisions here, so passive ranks need
only small commands ("fill slot 2 with adapter 7 from this folder"), never tensors. A slot is
named by the adapter's registration id, so an adapter registered again under the same name is
read again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .adapter import HostWeights, load_adapter

log = logging.getLogger(__name__)


class LoRASlots:
    def __init__(self, model, layers: dict, max_loras: int, max_cpu_loras: int, max_rank: int,
                 dtype: torch.dtype, architecture: str | None):
        self.model = model
        self.layers = layers
        self.max_rank = max_rank
        self.dtype = dtype
        self.architecture = architecture
        self.max_cpu_loras = max_cpu_loras
        self.host: OrderedDict[int, HostWeights] = OrderedDict()    # lora id -> weights
        self.owner: list[int | None] = [None] * max_loras           # slot -> lora id
        self.last_load_seconds = 0.0

    def host_weights(self, name: str, lora_id: int, directory: Path) -> HostWeights:
        """The adapter's host copy (read from disk if it was evicted), most recent in the LRU."""
        weights = self.host.get(lora_id)
        if weights is None:
            started = time.monotonic()
            weights = load_adapter(name, Path(directory), self.model, self.layers, self.max_rank,
                                   self.dtype, self.architecture)
            self.last_load_seconds = time.monotonic() - started
            self.host[lora_id] = weights
            while len(self.host) > self.max_cpu_loras:
                evicted, _ = self.host.popitem(last=False)
                log.info("LoRA adapter %d: host copy evicted (option.max_cpu_loras=%d)", evicted,
                         self.max_cpu_loras)
        self.host.move_to_end(lora_id)
        return weights

    def fill(self, slot: int, name: str, lora_id: int, directory: Path) -> None:
        weights = self.host_weights(name, lora_id, directory)
        for path, layer in self.layers.items():
            pieces = weights.get(path)
            if pieces:
                layer.set_slot(slot, {piece: (a.to(layer.lora_a[piece].device),
                                              b.to(layer.lora_b[piece].device))
                                      for piece, (a, b) in pieces.items()})
            else:
                layer.clear_slot(slot)
        self.owner[slot] = lora_id

    def drop(self, lora_id: int) -> None:
        self.host.pop(lora_id, None)

    def apply(self, command: dict) -> None:
        """A passive rank: rank 0's decision, as registry.py broadcast it."""
        if command["op"] == "fill":
            self.fill(command["slot"], command["name"], command["id"], Path(command["dir"]))
        elif command["op"] == "drop":
            self.drop(command["id"])
