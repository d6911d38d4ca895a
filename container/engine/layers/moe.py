"""A mixture-of-experts feed-forward block (Mixtral, Qwen3-MoE), split for tensor parallelism.

Every rank keeps every expert, but only its slice of each expert's intermediate features
(gate/up rows, down columns), so each rank loads 1/tp of the expert weights and the block's
output is a partial sum like a dense MLP's (reduced by the next norm). Routing runs in float32
on the full hidden state, which every rank has.

The experts' compute is a plain PyTorch loop over the experts that got tokens (CPU, and the
reference); on the GPU the grouped-GEMM Triton kernel (kernels/moe.py) runs all experts of a
layer in one launch per projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import gpu_kernels
from ..parallel import TensorParallel
from .decoder import GatedMLP
from .linear import ReplicatedLinear
from .partition import partition


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool):
    """(weights [T, k] float32, expert ids [T, k]): softmax over all experts, the top k,
    rescaled to sum to one when the model says so (Mixtral always; Qwen3-MoE: norm_topk_prob)."""
    if gpu_kernels(router_logits) is not None and top_k & (top_k - 1) == 0:
        from ..kernels.moe import route_top_k

        return route_top_k(router_logits, top_k, renormalize)       # one launch, not five
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def experts_reference(x, w13, w2, weights, experts):
    """sum_k weight_k * down_e(silu(gate_e(x)) * up_e(x)) for each token's chosen experts e."""
    out = torch.zeros_like(x)
    for expert in torch.unique(experts).tolist():
        token, slot = torch.where(experts == expert)
        gate, up = F.linear(x[token], w13[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[expert])
        out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
    return out


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, expert_intermediate: int, num_experts: int, top_k: int,
                 renormalize: bool, tp: TensorParallel, shared_intermediate: int = 0):
        super().__init__()
        self.tp, self.top_k, self.renormalize = tp, top_k, renormalize
        self.gate = ReplicatedLinear(hidden_size, num_experts)          # the router
        self.start, self.local = partition(expert_intermediate, tp.size, tp.rank)
        # per expert: this rank's gate rows then its up rows; its columns of down
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * self.local, hidden_size),
                                requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, self.local),
                               requires_grad=False)
        self.w13.weight_loader = self.load_w13
        self.w2.weight_loader = self.load_w2
        # Qwen2-MoE style shared expert, gated by a sigmoid of one more router row
        self.shared_expert = (GatedMLP(hidden_size, shared_intermediate, tp)
                              if shared_intermediate else None)
        self.shared_expert_gate = (ReplicatedLinear(hidden_size, 1)
                                   if shared_intermediate else None)

    def load_w13(self, param, tensor_slice, shard):
        """shard: (expert, 0 gate | 1 up) for one expert's matrix, or (None, piece) for a
        checkpoint that stores all experts in one [E, 2I, H] tensor (transformers 5)."""
        expert, piece = shard
        if expert is None:        # fused gate_up_proj [E, 2I, H]: gate rows, then up rows
            full = tensor_slice.get_shape()[1] // 2
            for piece in (0, 1):
                begin = piece * full + self.start
                param.data[:, piece * self.local:(piece + 1) * self.local].copy_(
                    tensor_slice[:, begin:begin + self.local])
            return
        rows = slice(piece * self.local, (piece + 1) * self.local)
        param.data[expert, rows].copy_(tensor_slice[self.start:self.start + self.local])

    def load_w2(self, param, tensor_slice, shard):
        expert, _ = shard
        if expert is None:        # fused down_proj [E, H, I]
            param.data.copy_(tensor_slice[:, :, self.start:self.start + self.local])
            return
        param.data[expert].copy_(tensor_slice[:, self.start:self.start + self.local])

    @property
    def partial_output(self) -> bool:
        return self.tp.enabled

    def forward(self, x):
        weights, experts = route(self.gate(x), self.top_k, self.renormalize)
        fused = gpu_kernels(x)
        if fused:
            from ..kernels.moe import grouped_experts

            out = grouped_experts(x, self.w13, self.w2, weights, experts)
        else:
            out = experts_reference(x, self.w13, self.w2, weights, experts)
        if self.shared_expert is not None:     # a partial sum too with tensor parallelism
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out
