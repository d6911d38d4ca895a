"""Rank, world size and local rank of this process, whoever launched it.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; mpirun sets OMPI_COMM_WORLD_*; a plain process
is rank 0 of 1. We map everything onto the torchrun names (DJL's handlers read LOCAL_RANK and
TENSOR_PARALLEL_DEGREE) before any user code runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_driver(self) -> bool:
        return self.rank == 0


def detect(env=None) -> DistEnv:
    env = os.environ if env is None else env
    if "OMPI_COMM_WORLD_RANK" in env:
        rank = int(env["OMPI_COMM_WORLD_RANK"])
        world = int(env["OMPI_COMM_WORLD_SIZE"])
        local = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", rank))
        local_world = int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", world))
    else:
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    if "SERVE_NODE_RANK" in env and "OMPI_COMM_WORLD_RANK" not in env:
        # several nodes under torchrun: c10d numbers nodes in the order they joined; ours go
        # node by node, so rank 0 is always the leader's (where the front end's socket is)
        rank = int(env["SERVE_NODE_RANK"]) * int(env["SERVE_RANKS_PER_NODE"]) + local
    return DistEnv(rank, world, local, local_world)


def export(dist: DistEnv, tensor_parallel_degree: int) -> None:
    """Publish the torchrun-style names (and DJL's) for libraries and user code."""
    os.environ.update({
        "RANK": str(dist.rank),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_RANK": str(dist.local_rank),
        "LOCAL_WORLD_SIZE": str(dist.local_world_size),
        "LOCAL_SIZE": str(dist.local_world_size),   # DeepSpeed AutoTP reads this
        "TENSOR_PARALLEL_DEGREE": str(tensor_parallel_degree),
    })
