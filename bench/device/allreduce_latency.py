"""Latency of one decode-sized all-reduce (1 x hidden bf16) across the GPUs of this host.

Run with torchrun --nproc_per_node=N. Rank 0 writes $OUT/allreduce_latency.json.
"""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

rank = int(os.environ["RANK"])
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
results = {}
for width in (4096, 8192, 4096 * 64):
    x = torch.randn(1, width, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(100):
            dist.all_reduce(x)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    results[f"nccl_{width}_us"] = start.elapsed_time(end) * 1000 / 100
# One-shot all-reduce over symmetric memory (NVLink peer loads, no multicast): a candidate for
# the small decode all-reduces, if this torch has it and it beats NCCL.
try:
    import torch.distributed._symmetric_memory as symm_mem

    group_name = dist.group.WORLD.group_name
    for width in (4096, 8192):
        buf = symm_mem.empty(1, width, device="cuda", dtype=torch.bfloat16)
        symm_mem.rendezvous(buf, group_name)
        buf.normal_()
        for _ in range(20):
            torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group_name)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(100):
                torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group_name)
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        results[f"symm_one_shot_{width}_us"] = start.elapsed_time(end) * 1000 / 100
        expected = buf.float() * dist.get_world_size()
        got = torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group_name).float()
        results[f"symm_one_shot_{width}_max_err"] = (got - expected).abs().max().item()
except Exception as exc:  # noqa: BLE001 - an experiment: report why it is unavailable
    results["symm_one_shot_error"] = f"{type(exc).__name__}: {exc}"[:300]
if rank == 0:
    out = Path(os.environ.get("OUT", "bench/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "allreduce_latency.json").write_text(json.dumps(results, indent=1))
    print(results)
dist.destroy_process_group()
