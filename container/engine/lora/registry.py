"""Rank 0's adapters: the registered names and which device slot serves each.

A request's adapter takes a slot when the scheduler admits it (`acquire`) and gives it back when
it finishes or is preempted (`release`). Slots nobody uses are reused least recently used
first; a request whose adapter finds every slot in use waits, while requests of resident
adapters and of the base model go on. Every slot decision is broadcast to the other ranks
(`broadcast`), which apply it to their own shards before the step that needs it.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoRAError
from .slots import LoRASlots
from .source import resolve_adapter_dir

log = logging.getLogger(__name__)


@dataclass
class Registered:
    name: str
    src: str
    directory: Path
    lora_id: int
    load_seconds: float
    options: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "src": self.src, "preload": True, "pin": False,
                "loadSeconds": round(self.load_seconds, 4),
                **({"options": self.options} if self.options else {})}


class LoRARegistry:
    def __init__(self, slots: LoRASlots, model_dir: Path | None = None, broadcast=None):
        self.slots = slots
        self.model_dir = model_dir
        self.broadcast = broadcast               # callable(dict) with tensor parallelism
        self.adapters: dict[str, Registered] = {}
        self.pins = [0] * len(slots.owner)
        self.unused: OrderedDict[int, None] = OrderedDict()   # filled slots nobody uses, LRU
        self._ids = itertools.count(1)
        from ...metrics import metrics

        self.metrics = metrics()

    # registration ------------------------------------------------------------------------------
    def register(self, name: str, src: str, options: dict | None = None) -> Registered:
        if not name:
            raise LoRAError(400, "InvalidAdapter", "name is required (?name=...)")
        if name in self.adapters:
            raise LoRAError(409, "AdapterExists", f"adapter {name!r} is already registered; "
                            f"update it (POST .../adapters/{name}/update) or unregister it")
        directory = resolve_adapter_dir(name, src, self.model_dir)
        lora_id = next(self._ids)
        self.slots.host_weights(name, lora_id, directory)      # reads and checks it, or raises
        entry = Registered(name, src, directory, lora_id, self.slots.last_load_seconds,
                           dict(options or {}))
        self.adapters[name] = entry
        self.metrics.lora_load_seconds.labels(name, "host").observe(entry.load_seconds)
        self._publish()
        log.info("LoRA adapter %s registered from %s (%.3f s)", name, src, entry.load_seconds)
        return entry

    def unregister(self, name: str) -> None:
        entry = self.get(name)
        del self.adapters[name]
        self.slots.drop(entry.lora_id)
        self._send({"op": "drop", "id": entry.lora_id})
        for slot, owner in enumerate(self.slots.owner):
            if owner == entry.lora_id and not self.pins[slot]:
                self._free(slot)                     # in-use slots are freed by release()
        self._publish()
        log.info("LoRA adapter %s unregistered", name)

    def get(self, name: str) -> Registered:
        entry = self.adapters.get(name)
        if entry is None:
            raise LoRAError(404, "AdapterNotFound",
                            f"adapter {name!r} is not registered; registered: "
                            f"{', '.join(sorted(self.adapters)) or 'none'}")
        return entry

    # residency -----------------------------------------------------------------------------------
    def acquire(self, seq) -> bool:
        """Give seq's adapter a device slot (filling one if need be); False: none is free."""
        entry = seq.lora
        if entry is None or seq.lora_slot >= 0:
            return True
        owner = self.slots.owner
        slot = next((s for s, o in enumerate(owner) if o == entry.lora_id), None)
        if slot is None:
            slot = next((s for s, o in enumerate(owner) if o is None), None)
            if slot is None and self.unused:
                slot = next(iter(self.unused))
            if slot is None:
                return False
            self.unused.pop(slot, None)
            self.slots.fill(slot, entry.name, entry.lora_id, entry.directory)
            self._send({"op": "fill", "slot": slot, "name": entry.name, "id": entry.lora_id,
                        "dir": str(entry.directory)})
            self.metrics.lora_load_seconds.labels(entry.name, "device").observe(
                self.slots.last_load_seconds)
            self.slots.last_load_seconds = 0.0
        self.unused.pop(slot, None)
        self.pins[slot] += 1
        seq.lora_slot = slot
        self._publish()
        return True

    def release(self, seq) -> None:
        slot = seq.lora_slot
        if slot < 0:
            return
        seq.lora_slot = -1
        self.pins[slot] -= 1
        if self.pins[slot]:
            return
        owner = self.slots.owner[slot]
        if any(e.lora_id == owner for e in self.adapters.values()):
            self.unused[slot] = None                 # most recently used at the end
        else:
            self._free(slot)                         # unregistered while it ran

    def _free(self, slot: int) -> None:
        self.slots.owner[slot] = None
        self.unused.pop(slot, None)

    def _send(self, command: dict) -> None:
        if self.broadcast is not None:
            self.broadcast(command)

    # figures -------------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        return {"lora_adapters_registered": len(self.adapters),
                "lora_adapters_on_device": sum(o is not None for o in self.slots.owner),
                "lora_adapters_in_host_memory": len(self.slots.host),
                "lora_slots_in_use": sum(1 for p in self.pins if p)}

    def _publish(self) -> None:
        for where, value in (("device", sum(o is not None for o in self.slots.owner)),
                             ("host", len(self.slots.host))):
            self.metrics.lora_resident.labels(where).set(value)
