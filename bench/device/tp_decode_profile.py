"""Where a tensor-parallel decode step's time goes. Run with torchrun --nproc_per_node=N:

    torchrun --nproc_per_node=2 bench/device/tp_decode_profile.py

Every rank builds the native engine as serve does (8B-shaped checkpoint at $CKPT_DIR). Then,
for each all-reduce variant (all-reduce, add and norm in one kernel; one-shot over symmetric
memory with the copy fused into the kernel; copy + one-shot; NCCL), the batch-1 and batch-16
decode graphs are re-captured and replayed in lockstep on every rank, one replay profiled on rank 0 (kernel classes: GEMV,
attention, all-reduce, the LM head's all-gather...). Last, W1 in-process: rank 0 runs the
engine (1 x 128 in / 256 out, greedy), the other ranks follow its plans as in serve.
Rank 0 writes $OUT/tp_decode_profile_tpN.json and prints a table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode_profile as prof  # noqa: E402

OUT, CKPT, log = prof.OUT, prof.CKPT, prof.log
RESULTS: dict = {}


def build():
    import torch.distributed as dist

    from container.config.loader import load_config
    from container.engine.service import NativeService
    from container.workers.dist_env import detect, export

    rank_env = detect()
    export(rank_env, rank_env.world_size)
    env = {"OPTION_MAX_ROLLING_BATCH_SIZE": "16", "OPTION_MAX_MODEL_LEN": "2048",
           "OPTION_TENSOR_PARALLEL_DEGREE": str(rank_env.world_size)}
    started = time.perf_counter()
    svc = NativeService(load_config(str(CKPT), env), rank_env)
    if rank_env.rank:                    # follow rank 0's warm-up steps, until its heartbeat
        follow_until_idle(svc)
    else:
        if svc.plan_channel is not None:
            svc.plan_channel.heartbeat()
    if dist.is_initialized():
        dist.barrier()
    RESULTS["load_s"] = time.perf_counter() - started
    return svc, rank_env.rank


def follow_until_idle(svc) -> None:
    from container.engine.llm_engine import follow_steps

    follow_steps(svc.runner, svc.plan_channel, until_idle=True)


def lockstep_replays(svc, rank: int) -> dict:
    import torch.distributed as dist

    def barrier():
        if dist.is_initialized():
            dist.barrier()

    runner = svc.runner
    row = {}
    for batch in sorted(runner.graphs.graphs):
        runner.execute(prof.decode_plan(batch, 256, svc.block_manager.num_blocks,
                                        runner.config.vocab_size))
        graph = runner.graphs.graphs[batch]
        barrier()
        row[f"b{batch}_ms"] = round(prof.time_graph(graph, 100), 4)
        barrier()
        if rank == 0:
            row[f"profile_b{batch}"] = prof.profile_kernels(graph.replay, 5)
        else:
            for _ in range(5):
                graph.replay()
        barrier()
    return row


def variants(svc, rank: int) -> None:
    """fused_norm: all-reduce + add + norm in one kernel (kernels/allreduce_norm.py), with and
    without programmatic dependent launch; symm_fused_copy: torch's one-shot all-reduce, then
    the norm kernel; nccl: NCCL all-reduce, then the norm kernel."""
    reducer = svc.runner.tp.small_all_reduce
    if reducer is None:                         # one rank: with and without PDL only
        for name, pdl in (("single_rank", "1"), ("single_rank_no_pdl", "0")):
            os.environ["SERVE_PDL"] = pdl
            prof.recapture([1, 16], svc)
            RESULTS[name] = lockstep_replays(svc, rank)
            log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in RESULTS[name].items()
                                         if k.endswith("_ms")))
        os.environ["SERVE_PDL"] = "1"
        prof.recapture([1, 2, 4, 8, 16], svc)
        return
    saved = (reducer.enabled, reducer.fuse_copy, reducer.norm)
    plan = [("fused_norm", True, saved[1], True, "1"),
            ("fused_norm_no_pdl", True, saved[1], True, "0"),
            ("symm_fused_copy", True, True, False, "1"), ("nccl", False, False, False, "1")]
    for name, enabled, fuse_copy, fused_norm, pdl in plan:
        if fused_norm and saved[2] is None:
            RESULTS[name] = "fused all-reduce + norm not set up"
            continue
        reducer.enabled, reducer.fuse_copy, reducer.norm = enabled, fuse_copy, saved[2]
        os.environ["SERVE_FUSED_ALLREDUCE_NORM"] = "1" if fused_norm else "0"
        os.environ["SERVE_PDL"] = pdl
        if not fused_norm:
            reducer.norm = None
        prof.recapture([1, 16], svc)
        RESULTS[name] = lockstep_replays(svc, rank)
        if rank == 0:
            log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in RESULTS[name].items()
                                         if k.endswith("_ms")))
    reducer.enabled, reducer.fuse_copy, reducer.norm = saved
    os.environ["SERVE_FUSED_ALLREDUCE_NORM"] = os.environ["SERVE_PDL"] = "1"
    prof.recapture([1, 2, 4, 8, 16], svc)


def engine_w1(svc, rank: int) -> None:
    from container.bench.offline import random_token_prompts

    if rank:
        follow_until_idle(svc)
        return
    prompts = iter(random_token_prompts(svc.runner.config.vocab_size, 8, 128, seed=7))
    prof._engine_w1(svc.engine, next(prompts), 16)                     # warm
    runs = [prof._engine_w1(svc.engine, next(prompts)) for _ in range(3)]
    RESULTS["engine_w1"] = {"runs": runs, "tok_s": max(r["tok_s"] for r in runs),
                            "itl_ms": min(r["itl_ms"] for r in runs)}
    log(f"engine W1 (tp={svc.runner.tp.size}): {RESULTS['engine_w1']}")
    if svc.plan_channel is not None:
        svc.plan_channel.heartbeat()


def main() -> None:
    svc, rank = build()
    RESULTS["tp"] = svc.runner.tp.size
    reducer = svc.runner.tp.small_all_reduce
    RESULTS["small_all_reduce"] = ("off" if reducer is None else
                                   "fused copy" if reducer.fuse_copy else "copy + one-shot")
    RESULTS["fused_allreduce_norm"] = reducer is not None and reducer.norm is not None
    try:
        variants(svc, rank)
        engine_w1(svc, rank)
    finally:
        if rank == 0:
            OUT.mkdir(parents=True, exist_ok=True)
            path = OUT / f"tp_decode_profile_tp{RESULTS['tp']}.json"
            path.write_text(json.dumps(RESULTS, indent=1, default=str))
            for name, row in RESULTS.items():
                if isinstance(row, dict) and "profile_b1" in row and "per_repeat_us" in \
                        row["profile_b1"]:
                    p = row["profile_b1"]
                    print(f"{name}: b1 {row.get('b1_ms')} ms, b16 {row.get('b16_ms')} ms; "
                          f"b1 kernels {json.dumps(p.get('per_repeat_us'))}", flush=True)
            print("engine_w1:", RESULTS.get("engine_w1"), flush=True)
    os._exit(0)        # skip process-group teardown races at exit


if __name__ == "__main__":
    main()
