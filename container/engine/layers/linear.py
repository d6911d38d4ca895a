"""Linear layers split for tensor parallelism, each parameter carrying its own weight_loader.

A loader receives a lazy checkpoint slice (safetensors get_slice) and reads only the rows or
columns this rank keeps, so no rank ever materialises a whole tensor it does not hold.

Column-parallel: output features split, no communication. Row-parallel: input features split,
partial outputs summed with one all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import gpu_kernels
from ..parallel import SINGLE, TensorParallel
from .cpu_packing import packed_linear
from .partition import partition


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear, except for one token on the GPU: the Triton GEMV (kernels/gemv.py), which
    streams the weight faster than cuBLAS's batch-1 kernels; and on the CPU, the weight's
    oneDNN-packed copy where it has one (cpu_packing.py)."""
    if x.is_cuda:
        if x.shape[0] == 1 and gpu_kernels(x) is not None:
            from ..kernels.gemv import gemv

            out = gemv(x.contiguous(), weight)
            return out if bias is None else out + bias
    else:
        packed = getattr(weight, "cpu_packed", None)
        if packed is not None and x.dtype == weight.dtype:
            return packed_linear(x, packed, bias)
    return F.linear(x, weight, bias)


def _copy(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"{what}: checkpoint shape {tuple(value.shape)} does not match the "
                         f"model's {tuple(param.shape)}")
    param.data.copy_(value)


def _rows(tensor_slice, start: int, count: int) -> torch.Tensor:
    return tensor_slice[start:start + count]


def _cols(tensor_slice, start: int, count: int) -> torch.Tensor:
    return tensor_slice[:, start:start + count]


class _RowsFrom:
    """A lazy checkpoint slice seen from row `offset` on: one matrix of a fused checkpoint
    tensor (Phi-3's qkv_proj and gate_up_proj), still read only where this rank's rows are."""

    def __init__(self, tensor_slice, offset: int):
        self.tensor_slice, self.offset = tensor_slice, offset

    def __getitem__(self, rows: slice):
        return self.tensor_slice[self.offset + rows.start:self.offset + rows.stop]


class LinearBase(nn.Module):
    """What every linear layer here shares: its product. A quantized variant (quant/layer.py)
    replaces `matmul` and keeps everything else (shards, loaders, reductions)."""

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return linear(x, self.weight, bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        for p in self.parameters():
            p.weight_loader = self.load_whole

    def load_whole(self, param, tensor_slice, shard_id=None):
        _copy(param, tensor_slice[:], "replicated linear")

    def forward(self, x):
        return self.matmul(x, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split into contiguous pieces, one per rank."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 tp: TensorParallel = SINGLE):
        super().__init__()
        self.tp = tp
        self.out_features = out_features
        self.start, self.local_out = partition(out_features, tp.size, tp.rank)
        self.weight = nn.Parameter(torch.empty(self.local_out, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(self.local_out), requires_grad=False) if bias else None
        for p in self.parameters():
            p.weight_loader = self.load_shard

    def load_shard(self, param, tensor_slice, shard_id=None):
        _copy(param, _rows(tensor_slice, self.start, self.local_out), "column-parallel linear")

    def forward(self, x):
        return self.matmul(x, self.bias)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel matrices stored as one (gate and up projections)."""

    def __init__(self, in_features: int, out_features: list[int], bias: bool = False,
                 tp: TensorParallel = SINGLE):
        super().__init__()
        self.out_features = list(out_features)
        self.pieces = [partition(n, tp.size, tp.rank) for n in out_features]
        self.offsets = [sum(c for _, c in self.pieces[:i]) for i in range(len(self.pieces))]
        total = sum(c for _, c in self.pieces)
        self.weight = nn.Parameter(torch.empty(total, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(total), requires_grad=False) if bias else None
        for p in self.parameters():
            p.weight_loader = self.load_shard

    def load_shard(self, param, tensor_slice, shard_id: int | None):
        """shard_id: which matrix; None: the checkpoint stores them all fused, in order."""
        if shard_id is None:
            for piece, offset in enumerate(self._fused_offsets()):
                self.load_shard(param, _RowsFrom(tensor_slice, offset), piece)
            return
        start, count = self.pieces[shard_id]
        target = param.data.narrow(0, self.offsets[shard_id], count)
        _copy(target, _rows(tensor_slice, start, count), f"merged linear piece {shard_id}")

    def _fused_offsets(self) -> list[int]:
        return [sum(self.out_features[:i]) for i in range(len(self.out_features))]

    def forward(self, x):
        return self.matmul(x, self.bias)


class QKVParallelLinear(LinearBase):
    """q, k and v projections in one matrix; each rank keeps whole KV-head groups.

    With at least as many KV heads as ranks, KV heads are split (unevenly if need be) and each
    rank keeps the query heads of its KV groups. With fewer KV heads than ranks, each KV head is
    replicated on tp/num_kv_heads ranks, which split that group's query heads.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, tp: TensorParallel = SINGLE):
        super().__init__()
        group = num_heads // num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads={num_heads} is not a multiple of "
                             f"num_key_value_heads={num_kv_heads}")
        if num_kv_heads >= tp.size:
            kv_start, kv_count = partition(num_kv_heads, tp.size, tp.rank)
            q_start, q_count = kv_start * group, kv_count * group
        else:
            if tp.size % num_kv_heads or group % (tp.size // num_kv_heads):
                raise ValueError(
                    f"cannot split {num_heads} attention heads with {num_kv_heads} KV heads "
                    f"across tensor_parallel_degree={tp.size}: use a degree that divides "
                    f"{num_kv_heads}, or a multiple of it that divides {num_heads}")
            replicas = tp.size // num_kv_heads
            kv_start, kv_count = tp.rank // replicas, 1
            per_rank = group // replicas
            q_start, q_count = kv_start * group + (tp.rank % replicas) * per_rank, per_rank
        self.head_dim = head_dim
        self.full_q, self.full_kv = num_heads * head_dim, num_kv_heads * head_dim
        self.num_heads, self.num_kv_heads = q_count, kv_count
        self.q_rows = (q_start * head_dim, q_count * head_dim)
        self.kv_rows = (kv_start * head_dim, kv_count * head_dim)
        total = (q_count + 2 * kv_count) * head_dim
        self.weight = nn.Parameter(torch.empty(total, hidden_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(total), requires_grad=False) if bias else None
        for p in self.parameters():
            p.weight_loader = self.load_shard

    def load_shard(self, param, tensor_slice, shard_id: str | None):
        """shard_id: q, k or v; None: the checkpoint stores q, k and v fused, in order."""
        if shard_id is None:
            for piece, offset in (("q", 0), ("k", self.full_q), ("v", self.full_q + self.full_kv)):
                self.load_shard(param, _RowsFrom(tensor_slice, offset), piece)
            return
        q_size, kv_size = self.q_rows[1], self.kv_rows[1]
        offset = {"q": 0, "k": q_size, "v": q_size + kv_size}[shard_id]
        start, count = self.q_rows if shard_id == "q" else self.kv_rows
        target = param.data.narrow(0, offset, count)
        _copy(target, _rows(tensor_slice, start, count), f"qkv piece {shard_id}")

    def forward(self, x):
        return self.matmul(x, self.bias)


class RowParallelLinear(LinearBase):
    """Input features split; each rank's partial product is summed with one all-reduce.

    `input_pieces` gives the (start, count) of this rank's input features when they do not
    follow the plain balanced split (attention output: the rank's query heads).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 tp: TensorParallel = SINGLE, input_piece: tuple[int, int] | None = None):
        super().__init__()
        self.tp = tp
        self.in_features = in_features
        self.start, self.local_in = input_piece or partition(in_features, tp.size, tp.rank)
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.weight.weight_loader = self.load_shard
        if self.bias is not None:
            self.bias.weight_loader = self.load_bias

    def load_shard(self, param, tensor_slice, shard_id=None):
        _copy(param, _cols(tensor_slice, self.start, self.local_in), "row-parallel linear")

    def load_bias(self, param, tensor_slice, shard_id=None):
        _copy(param, tensor_slice[:], "row-parallel bias")

    @property
    def can_defer_reduce(self) -> bool:
        """Its partial sum can be left for the next norm to reduce (fused with it)."""
        return self.tp.enabled and self.bias is None

    def forward(self, x, reduce: bool = True):
        """reduce=False (only where can_defer_reduce): this rank's partial sum."""
        out = self.matmul(x)
        if not reduce and self.can_defer_reduce:
            return out
        out = self.tp.all_reduce(out)
        return out if self.bias is None else out + self.bias
