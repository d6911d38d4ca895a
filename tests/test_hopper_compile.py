"""Every Triton kernel of the GPU path compiles for Hopper (sm_90, down to a cubin) as its
wrapper launches it, with and without programmatic dependent launch: checked without a GPU,
so CI catches a kernel that Triton's interpreter runs but its compiler refuses
(tests/hopper_compile.py does the work in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KERNELS = {"_rms_norm_kernel", "_rope_cache_kernel", "_silu_mul_kernel", "_argmax_part_kernel",
           "_argmax_final_kernel", "_gemv_kernel", "_prefill_kernel", "_decode_split_kernel",
           "_decode_merge_kernel", "_unpack_decode_kernel", "_allreduce_add_norm_kernel"}


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(HERE / "hopper_compile.py")], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
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
                                               "_decode_split_kernel",
                                               "_allreduce_add_norm_kernel"}
    for c in compiled:
        assert c.get("griddep_wait") == c["pdl"], c
        assert c.get("griddep_launch") == c["pdl"], c
