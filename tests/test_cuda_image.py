"""The CUDA image (docker/Dockerfile, the one a SageMaker endpoint pulls), run with podman on a
machine without a GPU.

The image is several GB, so this module does not build it: `make docker-test-cuda` builds
serve:gpu (`make docker-build`) and then runs this module with SERVE_TEST_CUDA_IMAGE set. In
`make test` it skips and says so. What it checks: torch and Triton are the CUDA builds, `serve`
starts the embedded model on CPU and logs that no GPU was found, /ping and /invocations answer,
SIGTERM drains (the CPU image's checks, from podman_helpers), the paths that would call
nvidia-smi or CUDA do not crash without them, and Triton compiles our kernels to cubins for
sm_80 and sm_90 (no GPU is needed to compile; running them is another matter).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from podman_helpers import (check_embedded_model_answers, check_sigterm_drains, podman_exec,
                            podman_problem)
from podman_helpers import containers  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

IMAGE = os.environ.get("SERVE_CUDA_IMAGE", "serve:gpu")


@pytest.fixture(scope="module")
def image():
    if not os.environ.get("SERVE_TEST_CUDA_IMAGE"):
        pytest.skip("the CUDA image check is not part of `make test` (a multi-GB build): "
                    "run `make docker-test-cuda`")
    problem = podman_problem()
    if problem:
        pytest.skip(problem)
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.skip(f"{IMAGE} is not built: `make docker-build` (or `make docker-test-cuda`)")
    return IMAGE


def test_torch_and_triton_are_the_cuda_builds(image):
    result = podman_exec(image, "python", "-c", "import torch, triton; print(torch.version.cuda); "
                         "print(torch.__version__, triton.__version__, torch.cuda.is_available())")
    assert result.returncode == 0, result.stderr
    cuda, versions = result.stdout.strip().splitlines()[-2:]
    print(f"\n[cuda image] torch.version.cuda={cuda}; torch, triton, cuda available: {versions}")
    assert cuda and cuda != "None"
    assert versions.endswith("False")                # no GPU here: CPU, not a crash


def test_the_image_asks_the_nvidia_runtime_for_gpus(image):
    env = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.Env}}", image],
                         capture_output=True, text=True, check=True).stdout
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_gpu_free_paths_do_not_crash(image):
    """No nvidia-smi and no driver: the code that asks for GPUs answers 'none' instead, and the
    GPU modules (Triton kernels, the DeepSpeed engine, xgrammar) import."""
    result = podman_exec(image, "python", "-c", """
import shutil, torch
from container.bench.results import device_name
from container.config.loader import count_gpus
from container.engine.kernels import allreduce_norm, fused, gemv, moe, paged_attention, step_inputs
from container.engines import deepspeed_engine
import xgrammar
assert shutil.which("nvidia-smi") is None
print("count_gpus:", count_gpus({}), "device_count:", torch.cuda.device_count())
print("device_name:", device_name())
print("cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version())
""")
    assert result.returncode == 0, result.stderr
    print(f"\n[cuda image] {result.stdout.strip()}")
    assert "count_gpus: 0 device_count: 0" in result.stdout


def test_every_nvidia_library_loads(image):
    """The pip-installed CUDA libraries resolve all their dependencies (dlopen needs no GPU).
    nvshmem's PMIx bootstrap plugin is left out: nvshmem loads it into a PMIx launcher only."""
    result = podman_exec(image, "python", "-c", """
import ctypes, pathlib, nvidia
libs = sorted(p for p in pathlib.Path(nvidia.__path__[0]).glob("**/lib/*.so*")
              if not p.name.startswith("nvshmem_bootstrap_pmix"))
for lib in libs:
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
print(len(libs), "NVIDIA libraries loaded")
""")
    assert result.returncode == 0, result.stderr
    print(f"\n[cuda image] {result.stdout.strip()}")


# Ahead-of-time compilation needs no GPU: Triton lowers our kernels to PTX and runs the ptxas it
# ships, giving the cubin a GPU of that architecture would load (A100 = sm_80, H100 = sm_90).
COMPILE_KERNELS = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from container.engine.kernels import fused

def cubin_bytes(kernel, signature, constexprs, arch):
    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return len(triton.compile(source, target=GPUTarget("cuda", arch, 32)).asm["cubin"])

for arch in (80, 90):
    rms = cubin_bytes(fused._rms_norm_kernel, {
        "x_ptr": "*bf16", "residual_ptr": "*bf16", "weight_ptr": "*bf16", "out_ptr": "*bf16",
        "residual_out_ptr": "*bf16", "eps": "fp32", "stride_x": "i32", "stride_r": "i32",
        "stride_o": "i32", "stride_ro": "i32"},
        {"N": 4096, "BLOCK": 4096, "HAS_RESIDUAL": True, "PDL": False}, arch)
    silu = cubin_bytes(fused._silu_mul_kernel, {
        "x_ptr": "*bf16", "out_ptr": "*bf16", "stride_x": "i32", "stride_o": "i32"},
        {"N": 14336, "BLOCK": 1024, "PDL": False}, arch)
    print(f"sm_{arch}: rms_norm cubin {rms} B, silu_mul cubin {silu} B")
"""


def test_triton_compiles_our_kernels_to_cubins_without_a_gpu(image):
    result = podman_exec(image, "python", "-c", COMPILE_KERNELS)
    assert result.returncode == 0, result.stderr
    print(f"\n[cuda image] {result.stdout.strip()}")
    assert "sm_80:" in result.stdout and "sm_90:" in result.stdout


def test_serve_runs_the_embedded_model_on_cpu(image, containers):
    container = check_embedded_model_answers(containers, image)
    assert "no GPU found" in container.logs()


@pytest.mark.parametrize("init", [False, True], ids=["tini-pid1", "podman-init"])
def test_sigterm_drains_the_stream_in_flight_then_exits_zero(image, containers, tmp_path, init):
    check_sigterm_drains(containers, image, tmp_path, init)
