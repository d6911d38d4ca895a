"""The process group of a tensor-parallel worker group, and the channel rank 0 drives it with.

Handlers (DJL's DeepSpeed style) need every rank to see the same Input: rank 0 broadcasts it
on a gloo group. An idle rank 0 broadcasts a heartbeat, so the other ranks' waits never reach
the collective timeout while there is simply no traffic; a rank stuck past that timeout (a
dead peer) raises and takes the group down, and serve restarts it.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time

from .dist_env import DistEnv

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
_HEARTBEAT = "__heartbeat__"


def collective_timeout_s() -> float:
    return float(os.environ.get("SERVING_COLLECTIVE_TIMEOUT", "120"))


def init_process_group(dist: DistEnv, backend: str | None = None) -> None:
    """Join the default group (NCCL on GPU, gloo on CPU) once per process."""
    import torch
    import torch.distributed as td

    if td.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(dist.local_rank)
    td.init_process_group(
        backend=backend, rank=dist.rank, world_size=dist.world_size,
        timeout=datetime.timedelta(seconds=collective_timeout_s()))


class GroupChannel:
    def __init__(self, dist: DistEnv, group):
        self.dist = dist
        self.group = group                      # a gloo group: objects travel on the CPU
        self._lock = threading.Lock()
        self._last = time.monotonic()
        if dist.rank == 0:
            threading.Thread(target=self._heartbeat, name="group-heartbeat", daemon=True).start()

    @classmethod
    def create(cls, dist: DistEnv, config=None) -> "GroupChannel":
        import torch.distributed as td

        init_process_group(dist)
        group = td.new_group(backend="gloo",
                             timeout=datetime.timedelta(seconds=collective_timeout_s()))
        return cls(dist, group)

    def _broadcast(self, payload) -> None:
        import torch.distributed as td

        with self._lock:
            td.broadcast_object_list([payload], src=0, group=self.group)
            self._last = time.monotonic()

    def broadcast_input(self, inputs) -> None:
        self._broadcast(inputs)

    def receive_input(self):
        import torch.distributed as td

        while True:
            box = [None]
            td.broadcast_object_list(box, src=0, group=self.group)
            if box[0] != _HEARTBEAT:
                return box[0]

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S / 2)
            if time.monotonic() - self._last >= HEARTBEAT_S:
                try:
                    self._broadcast(_HEARTBEAT)
                except Exception:  # noqa: BLE001 - a broken group: the main loop will fail too
                    log.exception("heartbeat broadcast failed; exiting")
                    os._exit(70)
