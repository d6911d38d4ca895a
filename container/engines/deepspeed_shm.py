"""DeepSpeed's CPU all-reduce segments in /dev/shm, unlinked once every rank has mapped them.

On a CPU, DeepSpeed all-reduces through one shared-memory segment (66 MB) per rank, named after
MASTER_ADDR and MASTER_PORT, and never unlinks them: every start or restart of a worker group
would leave them behind until /dev/shm fills. Once all ranks have mapped their peers' segments,
the names can go; the memory stays mapped until the ranks exit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def allreduce_buffer(rank: int) -> Path:
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_"
                               f"{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_allreduce_buffer(rank: int) -> None:
    """Call only when every rank has run a DeepSpeed all-reduce (so all mapped all segments)."""
    with contextlib.suppress(FileNotFoundError):
        allreduce_buffer(rank).unlink()


def release_after_handler_init(rank: int) -> None:
    """For DeepSpeed model.py handlers, after their initialization on every rank: a barrier
    (each rank has set DeepSpeed up, so has mapped its peers), then this rank's name goes."""
    import torch
    import torch.distributed as td

    if torch.cuda.is_available() or not td.is_initialized() or td.get_world_size() < 2:
        return
    td.barrier()
    unlink_allreduce_buffer(rank)
