"""Run by tests/test_gpu.py under torchrun (one rank per GPU): the fused all-reduce + add +
RMSNorm kernel against NCCL (a float32 sum) + the plain norm, for several row counts, many calls in a row
(the slots cycle and the sentinel is reset between uses), eagerly and replayed in a CUDA
graph. Exits non-zero on the first difference."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from container.engine.kernels.allreduce_norm import AllReduceNorm, reference


def main() -> None:
    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    hidden, eps, device = 4096, 1e-5, torch.device("cuda")
    fused = AllReduceNorm(dist.group.WORLD.group_name, rank, dist.get_world_size(), hidden,
                          torch.bfloat16, device, max_rows=16)
    generator = torch.Generator(device=device).manual_seed(100 + rank)
    weight = (torch.rand(hidden, device=device) + 0.5).to(torch.bfloat16)
    for call in range(40):
        rows = (1, 3, 16)[call % 3]
        partial = torch.randn(rows, hidden, device=device, generator=generator).bfloat16()
        partial[0, :8] = -0.0                          # the sentinel's bits, sent as +0.0
        residual = torch.randn(rows, hidden, device=device, generator=generator).bfloat16()
        out, summed = fused(partial, residual, weight, eps)
        expected_out, expected_summed = reference(partial, residual, weight, eps)
        worst = (summed.float() - expected_summed.float()).abs().max().item()
        assert torch.allclose(summed.float(), expected_summed.float(), atol=1e-2, rtol=1e-2), \
            f"residual differs at call {call} ({rows} rows): max {worst}"
        worst = (out.float() - expected_out.float()).abs().max().item()
        assert torch.allclose(out.float(), expected_out.float(), atol=2e-2, rtol=2e-2), \
            f"norm differs at call {call} ({rows} rows): max {worst}"
    # in a CUDA graph: the epoch counters advance on the device at every replay
    static = torch.randn(1, hidden, device=device, generator=generator).bfloat16()
    residual = torch.randn(1, hidden, device=device, generator=generator).bfloat16()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused(static, residual, weight, eps)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_summed = fused(static, residual, weight, eps)
    for replay in range(10):
        static.copy_(torch.randn(1, hidden, device=device, generator=generator).bfloat16())
        graph.replay()
        expected_out, expected_summed = reference(static, residual, weight, eps)
        assert torch.allclose(graph_out.float(), expected_out.float(), atol=2e-2, rtol=2e-2), \
            f"graph replay {replay} differs"
    torch.cuda.synchronize()
    dist.barrier()
    if rank == 0:
        print("fused all-reduce + norm matches NCCL", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
