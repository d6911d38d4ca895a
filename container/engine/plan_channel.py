"""Broadcast of each step's plan from rank 0 to the passive ranks (gloo, CPU tensors).

Two small collectives a step: the plan's length, then its int64 payload. An idle rank 0 sends
an empty plan as a heartbeat, so waiting ranks never hit the collective timeout just because
there is no traffic. A negative length announces a command instead of a plan (JSON bytes: a
LoRA slot decision), sent before the step that depends on it.
"""

from __future__ import annotations

import datetime
import json

import numpy as np
import torch
import torch.distributed as dist

from ..workers.group import collective_timeout_s
from .model_runner import StepPlan




class PlanChannel:
    def __init__(self):
        self.group = dist.new_group(backend="gloo",
                                    timeout=datetime.timedelta(seconds=collective_timeout_s()))
        self._length = torch.zeros(1, dtype=torch.int64)

    def send(self, plan: StepPlan | None) -> None:
        data = torch.from_numpy(plan.data) if plan is not None else torch.empty(0, dtype=torch.int64)
        self._length[0] = data.numel()
        dist.broadcast(self._length, src=0, group=self.group)
        if data.numel():
            dist.broadcast(data, src=0, group=self.group)

    def heartbeat(self) -> None:
        self.send(None)

    def send_command(self, command: dict) -> None:
        raw = np.frombuffer(json.dumps(command).encode(), np.uint8).astype(np.int64)
        self._length[0] = -raw.size
        dist.broadcast(self._length, src=0, group=self.group)
        dist.broadcast(torch.from_numpy(raw), src=0, group=self.group)

    def receive(self) -> StepPlan | dict | None:
        """The next plan, a command (dict), or None for a heartbeat."""
        dist.broadcast(self._length, src=0, group=self.group)
        size = int(self._length[0])
        if size == 0:
            return None
        if size < 0:
            raw = torch.empty(-size, dtype=torch.int64)
            dist.broadcast(raw, src=0, group=self.group)
            return json.loads(raw.numpy().astype(np.uint8).tobytes())
        data = torch.empty(size, dtype=torch.int64)
        dist.broadcast(data, src=0, group=self.group)
        return StepPlan(data.numpy().astype(np.int64, copy=False))
