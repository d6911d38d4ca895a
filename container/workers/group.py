"""Process-group helpers for multi-rank worker groups.

init_process_group joins torch.distributed (NCCL on GPU, gloo on CPU) with a collective
timeout, so a rank stuck waiting on a dead peer raises and the group is torn down.

GroupChannel carries handler inputs from rank 0 to the other ranks (DJL's DeepSpeed-style
handlers run handle() on every rank). It uses zmq sockets in the run directory rather than
torch.distributed, so a user's model.py stays free to set up torch.distributed (or DeepSpeed)
itself, exactly as it does under DJL.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle

import zmq

from .dist_env import DistEnv

log = logging.getLogger(__name__)


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
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
    td.init_process_group(
        backend=backend, rank=dist.rank, world_size=dist.world_size,
        timeout=datetime.timedelta(seconds=collective_timeout_s()))


class GroupChannel:
    """Rank 0 sends each handler Input to every other rank (ROUTER -> DEALERs)."""

    def __init__(self, dist: DistEnv, address: str):
        self.dist = dist
        self.context = zmq.Context.instance()
        if dist.rank == 0:
            self.socket = self.context.socket(zmq.ROUTER)
            self.socket.bind(address)
            self.peers = []
            while len(self.peers) < dist.world_size - 1:      # every rank says hello once
                identity, _ = self.socket.recv_multipart()
                self.peers.append(identity)
        else:
            self.socket = self.context.socket(zmq.DEALER)
            self.socket.setsockopt(zmq.IDENTITY, f"rank-{dist.rank}".encode())
            self.socket.connect(address)
            self.socket.send(b"hello")

    @classmethod
    def create(cls, dist: DistEnv, run_dir, generation: int) -> "GroupChannel":
        return cls(dist, f"ipc://{run_dir.path / f'group-{generation}.sock'}")

    def broadcast_input(self, inputs) -> None:
        payload = pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL)
        for peer in self.peers:
            self.socket.send_multipart([peer, payload])

    def receive_input(self):
        return pickle.loads(self.socket.recv())
