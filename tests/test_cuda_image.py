"""The CUDA image (docker/Dockerfile, the one a SageMaker endpoint pulls), run with podman on a
machine without a GPU.

The image is several GB, so this module does not build it: `make docker-test-cuda` builds
serve:gpu (`make docker-build`) and then runs this module with SERVE_TEST_CUDA_IMAGE set. In
`make test` it skips and says so. What it checks: torch and Triton are the CUDA builds, `serve`
starts the embedded model on CPU and logs that no GPU was found, /ping and /invocations answer,
SIGTERM drains (the CPU image's checks, from podman_helpers), and the paths that would call
nvidia-smi or CUDA do not crash without them.
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
""")
    assert result.returncode == 0, result.stderr
    print(f"\n[cuda image] {result.stdout.strip()}")
    assert "count_gpus: 0 device_count: 0" in result.stdout


def test_serve_runs_the_embedded_model_on_cpu(image, containers):
    container = check_embedded_model_answers(containers, image)
    assert "no GPU found" in container.logs()


@pytest.mark.parametrize("init", [False, True], ids=["tini-pid1", "podman-init"])
def test_sigterm_drains_the_stream_in_flight_then_exits_zero(image, containers, tmp_path, init):
    check_sigterm_drains(containers, image, tmp_path, init)
