"""The FP8 pieces of the GPU path: under Triton's interpreter on CPU (the FP8 GEMV, the fused
rotary + FP8 cache write, both paged-attention kernels reading an FP8 cache), and on a GPU
where there is one (_scaled_mm with per-token x per-channel scales, the whole model)."""

from __future__ import annotations

import pytest
import torch

import triton_interpreter

if not torch.cuda.is_available() and not triton_interpreter.enable():
    pytest.fail("triton is not installed: the kernel tests need it (pip install triton)")

from container.engine.quant.fp8 import (FP8, dequantize, fake_quantize_per_token,  # noqa: E402
                                        fp8_linear, linear_reference, quantize_per_channel)

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below cover it")
NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@CPU_ONLY
def test_fp8_gemv_matches_the_reference(monkeypatch):
    from container.engine.kernels.gemv import gemv_fp8

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1000, generator=generator)
    q, scale = quantize_per_channel(torch.randn(77, 1000, generator=generator))
    expected = x @ dequantize(q, scale, torch.float32).T
    assert torch.allclose(gemv_fp8(x, q, scale), expected, atol=1e-4)
    # and fp8_linear takes it for one token when the kernels run (here: on CPU tensors)
    monkeypatch.setenv("SERVE_KERNELS_ON_CPU", "1")
    bias = torch.randn(77, generator=generator)
    assert torch.allclose(fp8_linear(x, q, scale, bias), expected + bias, atol=1e-4)


@CPU_ONLY
def test_rope_and_fp8_cache_write_match_the_torch_path():
    from container.engine.kernels import fused
    from container.engine.layers.attention import write_kv
    from container.engine.layers.rotary import RotaryEmbedding

    rotary = RotaryEmbedding(64, 128, 10000.0, None)
    tokens, q_heads, kv_heads, page = 7, 6, 2, 8
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(tokens, q_heads, 64, generator=generator)
    k = torch.randn(tokens, kv_heads, 64, generator=generator) * 3
    v = torch.randn(tokens, kv_heads, 64, generator=generator)
    k[0, 0, :4] = torch.tensor([1000.0, -1000.0, 1e-4, 0.0])        # clamped, subnormal, zero
    positions = torch.tensor([0, 1, 2, 50, 51, 90, 127])
    slots = torch.tensor([3, 4, 5, 17, 18, 30, 9])
    cache = torch.zeros(2, 5, page, kv_heads, 64, dtype=FP8)
    expected = cache.clone()
    q_ref, k_ref = rotary(positions, q.clone(), k)
    write_kv(expected, k_ref, v, slots)
    fused.rope_and_cache(q, k, v, positions, rotary.cos, rotary.sin, cache, slots)
    assert torch.allclose(q, q_ref, atol=1e-5)
    assert not torch.isnan(cache.float()).any()
    got, want = cache.float(), expected.float()
    # the same bytes (tests/triton_interpreter.py narrows to e4m3 as the GPU does), but where
    # the two paths' float32 rotations differ in the last bit right at an FP8 tie
    same = cache.view(torch.uint8) == expected.view(torch.uint8)
    assert same.float().mean() > 0.999
    assert torch.allclose(got, want, rtol=2 ** -3, atol=2 ** -9)
    assert want[0, 3 // page, 3 % page, 0].abs().max() == 448      # clamped, not NaN


@CPU_ONLY
@pytest.mark.parametrize("lens, query_lens", [([37, 5, 100], [37, 2, 30]),
                                              ([37, 5, 100, 1], [1, 1, 1, 1])])
def test_paged_attention_kernels_read_an_fp8_cache(lens, query_lens):
    from container.engine.kernels.paged_attention import paged_decode, paged_prefill
    from container.engine.kernels.workspace import DecodeWorkspace
    from container.engine.layers.attention import TorchPagedAttention, write_kv
    from test_kernels import paged_case

    cache, meta, q, k, v = paged_case(4, 2, 64, 16, lens, query_lens)
    cache = cache.clamp(-448, 448).to(FP8)
    scale = 64 ** -0.5
    reference = TorchPagedAttention(scale)(q, k, v, cache.clone(), meta)
    write_kv(cache, k, v, meta.slot_mapping)
    out = paged_prefill(q, cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                        meta.max_query_len, scale)
    assert torch.allclose(out, reference, atol=1e-4), (out - reference).abs().max()
    if max(query_lens) == 1:
        for splits in (1, 3):
            decoded = paged_decode(q, cache, meta.block_tables, meta.seq_lens, scale, splits,
                                   DecodeWorkspace())
            assert torch.allclose(decoded, reference, atol=1e-4), splits


@pytest.mark.gpu
@NEEDS_GPU
@pytest.mark.parametrize("tokens", [2, 5, 64])
def test_scaled_mm_matches_fake_quantized_activations(tokens):
    from container.engine.quant.fp8 import (linear_scaled_mm, quantize_activations,
                                            quantize_per_token, scaled_mm_supported)

    device = "cuda"
    if not scaled_mm_supported(torch.device(device)):
        pytest.skip("no FP8 tensor cores on this GPU")
    generator = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(tokens, 4096, device=device, generator=generator).to(torch.bfloat16)
    q, scale = quantize_per_channel(torch.randn(1024, 4096, device=device,
                                                generator=generator).to(torch.bfloat16))
    got = linear_scaled_mm(x, q, scale).float()
    # against the activations as the kernel quantized them: an element right at an FP8 tie
    # may round the other way in the Triton quantizer than in torch, and one step near the
    # top of e4m3 moves an output of this width by up to ~1
    x_q, x_scale = quantize_activations(x)
    seen = x_q.float() * x_scale
    expected = linear_reference(seen, q, scale).float()
    assert torch.allclose(got, expected, atol=0.1, rtol=2e-2), (got - expected).abs().max()
    # and the quantizer itself against torch's: ties aside, the same FP8 values
    torch_q, torch_scale = quantize_per_token(x)
    assert torch.allclose(x_scale, torch_scale, rtol=1e-6)
    assert (x_q.view(torch.uint8) == torch_q.view(torch.uint8)).float().mean() > 0.999
    assert (fake_quantize_per_token(x).float() - seen).abs().max() <= x_scale.max() * 32
    assert torch.equal(fp8_linear(x, q, scale), linear_scaled_mm(x, q, scale))


@pytest.mark.gpu
@NEEDS_GPU
def test_fp8_gemv_on_the_gpu():
    from container.engine.kernels.gemv import gemv_fp8

    x = torch.randn(1, 4096, device="cuda").to(torch.bfloat16)
    q, scale = quantize_per_channel(torch.randn(14336, 4096, device="cuda"))
    expected = linear_reference(x.float(), q, scale)
    assert torch.allclose(gemv_fp8(x, q, scale).float(), expected, atol=0.05, rtol=2e-2)


@CPU_ONLY
def test_per_token_quant_kernel_matches_torch():
    from container.engine.kernels.quant import per_token_quant
    from container.engine.quant.fp8 import FP8_MAX, MIN_SCALE, quantize_per_token

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 5000, generator=generator) * torch.tensor([1, 10, 0.01, 1, 1])[:, None]
    x[3] = 0                                               # a row of zeros: no division by 0
    q, scale = per_token_quant(x, FP8_MAX, MIN_SCALE)
    q_ref, scale_ref = quantize_per_token(x)
    assert torch.allclose(scale, scale_ref, rtol=1e-6)
    assert not torch.isnan(q.float()).any() and bool((q[3].float() == 0).all())
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@CPU_ONLY
def test_whole_fp8_engine_on_the_kernel_path_matches_its_torch_path(monkeypatch, tmp_path):
    """FP8 weights and FP8 KV cache: the kernel path (FP8 GEMV at one token, fused rotary +
    FP8 cache write, Triton attention reading FP8) against the PyTorch path, under
    preemption: the same greedy tokens."""
    from container.engine.model_config import ModelConfig
    from container.engine.quant.plan import QuantPlan
    from test_engine import make_engine, random_prompts, run_staggered
    from test_fp8 import runner_for
    from tiny_models import build_model

    model_dir = build_model(tmp_path / "m", "llama")
    prompts = random_prompts(ModelConfig.from_dir(model_dir).vocab_size, count=4)
    plan = QuantPlan(quantize_at_load=True, kv_cache_option="fp8")

    def run(kernels: bool):
        monkeypatch.setenv("SERVE_KERNELS_ON_CPU", "1" if kernels else "0")
        engine = make_engine(model_dir, num_blocks=12, budget=24)
        engine.runner = runner_for(model_dir, plan, blocks=12)
        return run_staggered(engine, prompts, 6), engine

    torch_tokens, _ = run(False)
    kernel_tokens, engine = run(True)
    assert engine.scheduler.total_preemptions > 0
    assert engine.runner.kv_caches[0].dtype == FP8
    assert kernel_tokens == torch_tokens
