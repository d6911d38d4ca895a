"""Compile every Triton kernel of the GPU path for Hopper (sm_90) on a machine without a GPU.

The interpreter tests (test_kernels.py) check what the kernels compute; they never run Triton's
compiler, so a kernel that the interpreter accepts may still fail to compile. Here each public
wrapper is called with CPU tensors of 8B-Llama shapes while its kernel launches are recorded
instead of run; every recorded launch is then compiled for sm_90 down to a cubin (Triton's own
ptxas), with programmatic dependent launch off and on. Prints one JSON line per compilation.
With --ptx DIR, and --compare, it also shows whether a kernel refactor changed the code.

Run in a fresh process (test_hopper_compile.py does): TRITON_INTERPRET must be unset before
triton is imported, or the kernels are interpreter objects that cannot be compiled.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from container.engine.kernels import (allreduce_norm, fused, gemv, moe, paged_attention, quant,
                                      step_inputs)
from container.engine.kernels.workspace import DecodeWorkspace

HOPPER = GPUTarget("cuda", 90, 32)
COMPILE_OPTIONS = ("num_warps", "num_stages")
LAUNCH_ONLY = ("launch_pdl",)
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
          torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1",
          torch.float8_e4m3fn: "fp8e4nv"}


class Recorder:
    """Stands in for a JITFunction at its module's global name: `kernel[grid](...)` records."""

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def record(module, name: str, launches: list) -> None:
    setattr(module, name, Recorder(getattr(module, name), launches))


def signature_of(kernel, args: tuple, kwargs: dict, pdl: bool) -> tuple[dict, dict, dict]:
    """(signature, constexprs, compile options) as Triton's launcher would build them."""
    values = dict(zip(kernel.arg_names, args))
    options = {}
    for key, value in kwargs.items():
        if key in COMPILE_OPTIONS:
            options[key] = value
        elif key not in LAUNCH_ONLY:
            values[key] = value
    if "PDL" in kernel.arg_names:
        values["PDL"] = pdl
    signature, constexprs = {}, {}
    for index, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(index,)] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + DTYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}.{param.name}: cannot type {value!r}")
    return signature, constexprs, options


def compile_launch(kernel, args, kwargs, pdl: bool, ptx_dir: Path | None = None) -> dict:
    signature, constexprs, options = signature_of(kernel, args, kwargs, pdl)
    result = {"kernel": kernel.__name__, "pdl": pdl, "options": options,
              "constexprs": {kernel.arg_names[i[0]]: v for i, v in constexprs.items()}}
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=HOPPER,
                                  options=options)
    except Exception as exc:  # noqa: BLE001 - reported per launch, the caller judges
        return dict(result, ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    ptx = compiled.asm["ptx"]
    if ptx_dir is not None:       # to compare two versions of a kernel: same PTX, same speed
        name = "-".join([kernel.__name__, *(f"{k}={v}" for k, v in result["constexprs"].items()),
                         *(f"{k}={v}" for k, v in options.items()),
                         *(["fp8"] if "*fp8e4nv" in signature.values() else [])])
        (ptx_dir / f"{name}.ptx").write_text(ptx)
    return dict(result, ok=len(compiled.asm["cubin"]) > 0,
                griddep_wait="griddepcontrol.wait" in ptx,
                griddep_launch="griddepcontrol.launch_dependents" in ptx)


def instructions(ptx: str) -> list[str]:
    """A PTX listing without debug information, source locations and comments."""
    kept = []
    for line in ptx.split(".section\t.debug")[0].splitlines():
        text = line.split("//")[0].strip()
        if text and not text.startswith((".loc", ".file", "$L__tmp", "$L__func")):
            kept.append(text)
    return kept


def _opcodes(lines: list[str]) -> list[str]:
    return sorted(line.split()[0] for line in lines)


def compare_ptx(before: Path, after: Path) -> dict[str, str]:
    """Per compilation: "same" code, "reordered" (the same instructions in another order, as
    when an address is computed at a call site instead of in the callee), or "different"."""
    verdicts = {}
    for path in sorted(after.glob("*.ptx")):
        old = before / path.name
        if not old.exists():
            verdicts[path.stem] = "new"
            continue
        a, b = instructions(old.read_text()), instructions(path.read_text())
        verdicts[path.stem] = ("same" if a == b else
                               "reordered" if _opcodes(a) == _opcodes(b) else "different")
    return verdicts


def gpu_path_launches() -> list:
    """Every kernel launch of the GPU path, from its wrapper, at 8B-Llama shapes; the norms
    and the fused all-reduce also at 70B's width."""
    launches: list = []
    for module, name in ((fused, "_rms_norm_kernel"), (fused, "_rope_cache_kernel"),
                         (fused, "_silu_mul_kernel"), (fused, "_argmax_part_kernel"),
                         (fused, "_argmax_final_kernel"), (gemv, "_gemv_kernel"),
                         (gemv, "_gemv_lora_kernel"), (gemv, "_gemv_fp8_kernel"), (quant, "_per_token_quant_kernel"),
                         (paged_attention, "_prefill_kernel"),
                         (paged_attention, "_decode_split_kernel"),
                         (paged_attention, "_decode_merge_kernel"),
                         (step_inputs, "_unpack_decode_kernel"),
                         (allreduce_norm, "_allreduce_add_norm_kernel"),
                         (moe, "_moe_gate_up_kernel"), (moe, "_moe_down_kernel"),
                         (moe, "_pair_gate_up_kernel"), (moe, "_pair_down_kernel"),
                         (moe, "_route_kernel")):
        record(module, name, launches)
    bf16 = torch.bfloat16
    hidden, q_heads, kv_heads, dim, page, blocks = 4096, 32, 8, 128, 16, 64
    x = torch.empty(4, hidden, dtype=bf16)
    weight = torch.empty(hidden, dtype=bf16)
    fused.rms_norm(x, weight, 1e-5)
    fused.rms_norm(x, weight, 1e-5, residual=x)
    kv_cache = torch.empty(2, blocks, page, kv_heads, dim, dtype=bf16)
    q = torch.empty(4, q_heads, dim, dtype=bf16)
    k = torch.empty(4, kv_heads, dim, dtype=bf16)
    cos = torch.empty(4096, dim // 2, dtype=torch.float32)
    fused.rope_and_cache(q, k, k.clone(), torch.zeros(4, dtype=torch.int64), cos, cos, kv_cache,
                         torch.zeros(4, dtype=torch.int64))
    head_norm = torch.empty(dim, dtype=bf16)              # Qwen3's q/k norms, in the same launch
    fused.rope_and_cache(q, k, k.clone(), torch.zeros(4, dtype=torch.int64), cos, cos, kv_cache,
                         torch.zeros(4, dtype=torch.int64), (head_norm, head_norm, 1e-6))
    fused.silu_and_mul(torch.empty(4, 2 * 14336, dtype=bf16))
    fused.argmax_rows(torch.empty(4, 128256, dtype=bf16), torch.empty(4, dtype=torch.int64))
    gemv.gemv(torch.empty(1, hidden, dtype=bf16), torch.empty(1024, hidden, dtype=bf16))
    # LoRA at batch 1: the expand in the GEMV's epilogue (h: 16 K-slices of a rank-16 shrink)
    gemv.gemv_lora(torch.empty(1, hidden, dtype=bf16), torch.empty(1024, hidden, dtype=bf16),
                   torch.empty(16, 1, 16, dtype=torch.float32), torch.empty(8, 16, 1024, dtype=bf16),
                   torch.zeros(1, dtype=torch.int64), [1024, 1024])
    # FP8 (option.quantize=fp8, option.kv_cache_dtype=fp8): the weight GEMV, the cache write
    # and both attention kernels reading an FP8 cache
    fp8 = torch.float8_e4m3fn
    gemv.gemv_fp8(torch.empty(1, hidden, dtype=bf16), torch.empty(1024, hidden, dtype=fp8),
                  torch.empty(1024, dtype=torch.float32))
    for width in (hidden, 14336):        # activations into _scaled_mm (qkv / gate_up, down)
        quant.per_token_quant(torch.empty(4, width, dtype=bf16), 448.0, 1e-12)
    fp8_cache = torch.empty(2, blocks, page, kv_heads, dim, dtype=fp8)
    fused.rope_and_cache(q, k, k.clone(), torch.zeros(4, dtype=torch.int64), cos, cos,
                         fp8_cache, torch.zeros(4, dtype=torch.int64))
    tables = torch.zeros(4, blocks, dtype=torch.int64)        # as in cuda_graphs.DecodeGraphs
    seq_lens = torch.full((4,), 256, dtype=torch.int64)
    paged_attention.paged_prefill(q, kv_cache, tables, seq_lens,
                                  torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32), 1, 0.088)
    workspace = DecodeWorkspace()
    for splits in (1, 4):
        paged_attention.paged_decode(q, kv_cache, tables, seq_lens, 0.088, splits, workspace)
    paged_attention.DECODE_OVERRIDE = {"block_n": 16, "num_warps": 2, "num_stages": 2}
    paged_attention.paged_decode(q, kv_cache, tables, seq_lens, 0.088, 4, workspace)  # + merge
    paged_attention.DECODE_OVERRIDE = None
    paged_attention.paged_prefill(q, fp8_cache, tables, seq_lens,
                                  torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32), 1, 0.088)
    for splits in (1, 4):
        paged_attention.paged_decode(q, fp8_cache, tables, seq_lens, 0.088, splits, workspace)
    # sliding window and soft-capping (Mistral, Gemma): runtime arguments of the same kernels
    paged_attention.paged_prefill(q, kv_cache, tables, seq_lens,
                                  torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32), 1, 0.088,
                                  window=4096, softcap=50.0)
    paged_attention.paged_decode(q, kv_cache, tables, seq_lens, 0.088, 4, workspace,
                                 window=4096, softcap=50.0)
    # grouped expert GEMMs at Mixtral-8x7B's shapes (hidden 4096, 14336 per expert, top 2),
    # one token (the pair kernels), a decode batch (16-row blocks), a prefill (64-row blocks)
    for tokens in (1, 64, 512):
        experts = torch.randint(0, 8, (tokens, 2))
        moe.grouped_experts(torch.empty(tokens, hidden, dtype=bf16),
                            torch.empty(8, 2 * 14336, hidden, dtype=bf16),
                            torch.empty(8, hidden, 14336, dtype=bf16),
                            torch.rand(tokens, 2), experts)
    moe.grouped_experts(torch.empty(1, 2048, dtype=bf16),          # Qwen3-30B-A3B: 128, top 8
                        torch.empty(128, 2 * 768, 2048, dtype=bf16),
                        torch.empty(128, 2048, 768, dtype=bf16),
                        torch.rand(1, 8), torch.randint(0, 128, (1, 8)))
    moe.route_top_k(torch.empty(1, 128, dtype=bf16), 8, True)      # its router, then Mixtral's
    moe.route_top_k(torch.empty(16, 8, dtype=bf16), 2, True)
    step_inputs.unpack_decode_plan(torch.zeros(4096, dtype=torch.int64),
                                   torch.zeros(4, dtype=torch.int64),
                                   *(torch.zeros(4, dtype=torch.int64) for _ in range(3)),
                                   seq_lens, tables, 0)
    for world, width in ((2, hidden), (4, 8192)):    # 8B at TP=2; 70B (hidden 8192) at TP=4
        fused_allreduce = object.__new__(allreduce_norm.AllReduceNorm)   # only addresses
        fused_allreduce.rank, fused_allreduce.world, fused_allreduce.max_rows = 1, world, 64
        fused_allreduce.buffer_ptrs = torch.zeros(world, dtype=torch.int64)
        fused_allreduce.epochs = torch.zeros(64, dtype=torch.int64)
        rows = torch.empty(4, width, dtype=bf16)
        fused_allreduce(rows, None, weight.new_empty(width), 1e-5)
        fused_allreduce(rows, rows, weight.new_empty(width), 1e-5)
    fused.rms_norm(torch.empty(4, 8192, dtype=bf16), weight.new_empty(8192), 1e-5)
    return launches


def main() -> int:
    """--ptx DIR also writes each compilation's PTX there; --compare BEFORE AFTER then tells,
    per compilation, whether a change to a kernel's source changed its code (a refactor that
    should not: "same" or "reordered" everywhere)."""
    if "--compare" in sys.argv:
        at = sys.argv.index("--compare")
        verdicts = compare_ptx(Path(sys.argv[at + 1]), Path(sys.argv[at + 2]))
        for name, verdict in verdicts.items():
            print(f"{verdict:10} {name}")
        return 0 if set(verdicts.values()) <= {"same", "reordered"} else 1
    ptx_dir = Path(sys.argv[sys.argv.index("--ptx") + 1]) if "--ptx" in sys.argv else None
    if ptx_dir is not None:
        ptx_dir.mkdir(parents=True, exist_ok=True)
    for kernel, args, kwargs in gpu_path_launches():
        tuned = {"_gemv_kernel": gemv.CONFIGS, "_gemv_fp8_kernel": gemv.FP8_CONFIGS}
        if kernel.__name__ in tuned:       # on a GPU the autotuner picks one of these
            variants = [dict(kwargs, **config.kwargs, num_warps=config.num_warps,
                             num_stages=config.num_stages) for config in tuned[kernel.__name__]]
        else:
            variants = [kwargs]
        for variant in variants:
            for pdl in ((False, True) if "PDL" in kernel.arg_names else (False,)):
                print(json.dumps(compile_launch(kernel, args, variant, pdl, ptx_dir)),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
