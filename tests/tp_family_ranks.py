"""Two gloo ranks in-process for tests/test_model_families.py: rank 0 runs the engine on
staggered requests (broadcasting each step's plan), rank 1 follows; rank 0 writes the tokens.

usage: python tp_family_ranks.py MODEL_DIR OUT_JSON PORT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def rank_main(rank: int, model_dir: str, out: str, port: str) -> None:
    import torch
    import torch.distributed as dist

    from container.engine.llm_engine import follow_steps
    from container.engine.model_config import ModelConfig
    from container.engine.model_runner import ModelRunner
    from container.engine.parallel import TensorParallel
    from container.engine.plan_channel import PlanChannel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    channel = PlanChannel()
    config = ModelConfig.from_dir(model_dir)
    runner = ModelRunner(config, model_dir, 512, torch.float32, torch.device("cpu"),
                         TensorParallel(rank, 2), 4)
    runner.allocate_kv_cache(40)
    if rank == 1:
        follow_steps(runner, channel, until_idle=True)
    else:
        lead_steps(runner, channel, config, out)
    # Leaving with gloo's threads still up aborts the process ("terminate called without an
    # active exception"): meet, then tear the group down on both ranks.
    dist.barrier()
    dist.destroy_process_group()


def lead_steps(runner, channel, config, out: str) -> None:
    from container.engine.block_manager import BlockManager
    from container.engine.llm_engine import LLMEngine
    from container.engine.scheduler import Scheduler
    from test_engine import random_prompts, run_staggered

    engine = LLMEngine(runner, Scheduler(BlockManager(40, 4), 8, 24), config.eos_token_ids, 512,
                       channel)
    prompts = random_prompts(config.vocab_size)
    tokens = run_staggered(engine, prompts, 12)
    channel.heartbeat()
    Path(out).write_text(json.dumps({"prompts": prompts, "tokens": tokens,
                                     "preemptions": engine.scheduler.total_preemptions,
                                     "params": sum(p.numel() for p in runner.model.parameters())}))


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=tuple(sys.argv[1:4]), nprocs=2)
