"""Every Triton kernel of the GPU path compiles for Hopper (sm_90, down to a cubin) as its
wrapper launches it, with and without programmatic dependent launch: checked without a GPU,
so CI catches a kernel that Triton's interpreter runs but its compiler refuses
(tests/hopper_compile.py does the work in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KERNELS = {"_rms_norm_kernel", "_rope_cache_kernel", "_silu_mul_kernel", "_argmax_part_kernel",
           "_argmax_final_kernel", "_gemv_kernel", "_gemv_lora_kernel", "_gemv_fp8_kernel",
           "_per_token_quant_kernel", "_prefill_kernel", "_decode_split_kernel",
           "_decode_merge_kernel", "_unpack_decode_kernel", "_allreduce_add_norm_kernel",
           "_moe_gate_up_kernel", "_moe_down_kernel", "_pair_gate_up_kernel",
           "_pair_down_kernel", "_route_kernel"}


def _hopper_compile(*args: str) -> subprocess.CompletedProcess:
    """In a fresh process: the script unsets TRITON_INTERPRET before importing triton."""
    return subprocess.run([sys.executable, str(HERE / "hopper_compile.py"), *args],
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ptx")


@pytest.fixture(scope="module")
def compiled(ptx_dir) -> list[dict]:
    done = _hopper_compile("--ptx", str(ptx_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_of_the_gpu_path_was_compiled(compiled):
    assert {c["kernel"] for c in compiled} == KERNELS


def test_every_launch_compiles_for_sm90(compiled):
    failed = [f"{c['kernel']} {c['constexprs']}: {c['error']}" for c in compiled if not c["ok"]]
    assert not failed, "\n".join(failed)


def test_pdl_kernels_wait_and_release_only_when_asked(compiled):
    """With PDL a kernel must wait for its predecessor (griddepcontrol.wait) before reading its
    output, and let its successor launch; without it neither instruction may be there."""
    with_pdl = [c for c in compiled if c["pdl"]]
    assert {c["kernel"] for c in with_pdl} >= {"_rms_norm_kernel", "_gemv_kernel",
                                               "_gemv_fp8_kernel",
                                               "_decode_split_kernel",
                                               "_allreduce_add_norm_kernel"}
    for c in compiled:
        assert c.get("griddep_wait") == c["pdl"], c
        assert c.get("griddep_launch") == c["pdl"], c


def test_ptx_comparison_tells_reordered_from_changed_code(compiled, ptx_dir, tmp_path):
    """The --compare mode that vets kernel refactors: unchanged code is "same", the same
    instructions in another order "reordered", another instruction "different"."""
    assert _hopper_compile("--compare", str(ptx_dir), str(ptx_dir)).returncode == 0
    name = next(p.name for p in ptx_dir.glob("_rms_norm_kernel-*PDL=False*"))
    lines = (ptx_dir / name).read_text().splitlines()
    first, second = [i for i, line in enumerate(lines) if line.strip().startswith("cvt.f32")][:2]
    lines[first], lines[second] = lines[second], lines[first]
    (tmp_path / name).write_text("\n".join(lines))
    done = _hopper_compile("--compare", str(ptx_dir), str(tmp_path))
    assert done.returncode == 0 and done.stdout.split() == ["reordered", name[:-4]], done.stdout
    (tmp_path / name).write_text("\n".join(lines).replace("fma.rn.f32", "fma.rz.f32", 1))
    done = _hopper_compile("--compare", str(ptx_dir), str(tmp_path))
    assert done.returncode == 1 and done.stdout.split()[0] == "different", done.stdout
