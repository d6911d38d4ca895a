"""The batched LoRA kernels (kernels/lora.py: per-row Triton kernels and the dense path)
against a per-row float32 reference and the plain PyTorch path of LoRALinear: on CPU (Triton
under its interpreter), and on a real GPU where there is one."""

from __future__ import annotations

import pytest
import torch

import triton_interpreter

if not torch.cuda.is_available() and not triton_interpreter.enable():
    pytest.skip("triton is not installed", allow_module_level=True)

from container.engine.kernels.lora import (lora_dense, lora_expand, lora_gemv,  # noqa: E402
                                           lora_shrink)


def _case(device, dtype, tokens=7, k=80, n=48, slots=3, rank=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=gen).to(device, dtype)
    a = torch.randn(slots, rank, k, generator=gen).to(device, dtype)
    b = torch.randn(slots, rank, n, generator=gen).to(device, dtype)
    a[1, 5:] = 0                                 # a rank-5 adapter, zero-padded to 8
    b[1, 5:] = 0
    row_slots = torch.tensor([0, -1, 2, 1, 0, -1, 2] * (tokens // 7 + 1), dtype=torch.int64,
                             device=device)[:tokens]
    y = torch.randn(tokens, n + 16, generator=gen).to(device, dtype)
    return x, a, b, row_slots, y


def _reference(x, a, b, row_slots, y, offset):
    out = y.clone().float()
    for t, s in enumerate(row_slots.tolist()):
        if s >= 0:
            out[t, offset:offset + b.shape[2]] += (x[t].float() @ a[s].float().t()) @ b[s].float()
    return out


def _one_hot(row_slots, slots, dtype):
    from container.engine.layers.lora import LoRAContext

    mask = LoRAContext(slots).one_hot(row_slots.cpu().numpy())
    return torch.from_numpy(mask).to(row_slots.device, dtype)


def _check(device, dtype, tolerance, dense=False, **case):
    x, a, b, row_slots, y = _case(device, dtype, **case)
    want = _reference(x, a, b, row_slots, y, 16)
    if dense:
        got = y.clone()
        lora_dense(x, a, b, _one_hot(row_slots, a.shape[0], dtype), got[:, 16:], [b.shape[2]])
    else:
        h = lora_shrink(x, a, row_slots)
        got = lora_expand(h, b, row_slots, y, offset=16)
    assert torch.allclose(got.float(), want, atol=tolerance, rtol=tolerance)
    base_rows = row_slots < 0                    # rows of the base model are untouched
    assert torch.equal(got[base_rows], _case(device, dtype, **case)[4][base_rows])


# a short row (one program per row), a long one at few rows (the shrink cut into K slices),
# and many rows through the dense path
SHAPES = [dict(k=80), dict(k=1100, n=40), dict(k=96, tokens=40, dense=True)]
IDS = ["short", "sliced", "dense"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below covers it")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_kernels_under_the_interpreter_match_the_torch_path(shape):
    _check("cpu", torch.float32, 1e-3, **shape)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_kernels_on_the_gpu_match_the_torch_path(shape):
    _check("cuda", torch.bfloat16, 0.1 * (shape["k"] / 80) ** 0.5, **shape)


def _layer_case(device, rows=1):
    """A LoRALinear over a qkv layer with three slots filled (one q-only), and a mixed step of
    7 * rows token rows (rows=6: the dense path; rows=0: one token of slot 2, the GEMV with the
    LoRA epilogue)."""
    from container.engine.layers.linear import QKVParallelLinear
    from container.engine.layers.lora import LoRAContext, LoRALinear

    torch.manual_seed(1)
    base = QKVParallelLinear(64, 16, 4, 2).to(device)
    base.weight.data.normal_()
    context = LoRAContext(3, torch.float32)
    layer = LoRALinear(base, ["q_proj", "k_proj", "v_proj"], context, 3, 8, torch.float32)
    for slot, pieces in ((0, (0, 1, 2)), (1, (0,)), (2, (1, 2))):
        layer.set_slot(slot, {p: (torch.randn(4 + slot, 64, device=device),
                                  torch.randn(layer.pieces[p].out_count, 4 + slot,
                                              device=device)) for p in pieces})
    row_slots = [2, -1, 0, 1, 1, -1, 0] * rows if rows else [2]
    context.set(torch.tensor(row_slots), torch.device(device))
    return layer, torch.randn(len(row_slots), 64, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below covers it")
@pytest.mark.parametrize("rows", [0, 1, 6], ids=["one-token", "per-row", "dense"])
def test_lora_linear_kernel_path_matches_its_torch_path(monkeypatch, rows):
    layer, x = _layer_case("cpu", rows)
    assert layer.gemv_epilogue                  # q 64, k 32, v 32 rows: blocks fit the pieces
    want = layer(x)
    monkeypatch.setenv("SERVE_KERNELS_ON_CPU", "1")
    assert torch.allclose(layer(x), want, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("rows", [0, 1, 6], ids=["one-token", "per-row", "dense"])
def test_lora_linear_kernel_path_on_the_gpu(monkeypatch, rows):
    layer, x = _layer_case("cuda", rows)
    got = layer(x)
    monkeypatch.setenv("SERVE_KERNELS", "0")
    assert torch.allclose(got, layer(x), atol=1e-2, rtol=1e-3)


def _gemv_case(device, dtype, slot, k=1100, pieces=(64, 32, 32), seed=3):
    """One token through a three-piece layer (qkv-like), K long enough to be sliced."""
    gen = torch.Generator().manual_seed(seed)
    n, rank = sum(pieces), 8
    x = torch.randn(1, k, generator=gen).to(device, dtype)
    weight = torch.randn(n, k, generator=gen).to(device, dtype)
    a = torch.randn(len(pieces), 3, rank, k, generator=gen).to(device, dtype)
    b = torch.randn(3, rank, n, generator=gen).to(device, dtype)
    want = x.float() @ weight.float().t()
    if slot >= 0:
        start = 0
        for piece, count in enumerate(pieces):
            h = x.float() @ a[piece, slot].float().t()
            want[:, start:start + count] += h @ b[slot, :, start:start + count].float()
            start += count
    slots = torch.tensor([slot], dtype=torch.int64, device=device)
    return lora_gemv(x, weight, a, b, slots, list(pieces)), want


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below covers it")
@pytest.mark.parametrize("slot", [2, -1], ids=["adapter", "base"])
def test_gemv_with_lora_epilogue_under_the_interpreter(slot):
    """The batch-1 path: each piece of the output gets its own ranks of h, in one launch; a
    base-model token gets the plain product."""
    got, want = _gemv_case("cpu", torch.float32, slot)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("slot", [2, -1], ids=["adapter", "base"])
def test_gemv_with_lora_epilogue_on_the_gpu(slot):
    got, want = _gemv_case("cuda", torch.bfloat16, slot)
    assert torch.allclose(got.float(), want, atol=0.5, rtol=2e-2)
