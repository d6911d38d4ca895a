"""Cheap checks (no build) that docker/Dockerfile, the make targets and setup.py agree, so a
broken CUDA image shows in `make test` even though only `make docker-test-cuda` builds it."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO

DOCKERFILE = (REPO / "docker/Dockerfile").read_text()


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_build_args_are_declared():
    declared = {m.group(1) for m in re.finditer(r"^ARG (\w+)", DOCKERFILE, re.M)}
    assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_INDEX_URL", "EXTRAS", "EMBED_MODEL"} <= declared


def test_copied_and_mounted_paths_exist():
    for line in instructions():
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
        for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", line):
            assert (REPO / source).is_dir(), line


def test_torch_is_the_cuda_build_from_the_index_and_pinned_as_the_makefile_pins_it():
    pin = re.search(r"ARG TORCH_VERSION=(\S+)", DOCKERFILE).group(1)
    assert f"torch=={pin}" in (REPO / "Makefile").read_text()
    assert "docker/wheels" not in DOCKERFILE        # the CPU wheel lives there
    assert "torch.version.cuda" in DOCKERFILE        # the build fails on a CPU torch


def test_default_extras_exist_in_setup_py():
    extras = re.search(r'ARG EXTRAS="([^"]*)"', DOCKERFILE).group(1).split()
    listed = subprocess.run(["python3", str(REPO / "docker/requirements_from_setup.py"),
                             str(REPO / "setup.py"), *extras], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr


def test_our_code_is_copied_after_every_dependency_step():
    lines = instructions()
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY container "))
    installs = [i for i, line in enumerate(lines) if "pip install" in line and "--no-deps" not in line]
    assert installs and max(installs) < first_source


def test_make_targets_build_and_check_this_dockerfile():
    build = subprocess.run(["make", "-n", "docker-build"], cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert "--file docker/Dockerfile " in build.stdout and "--tag serve:gpu" in build.stdout
    check = subprocess.run(["make", "-n", "-o", "install", "-o", "docker-deps", "docker-test-cuda"],
                           cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "--file docker/Dockerfile " in check.stdout and "--tag serve:gpu" in check.stdout
    assert "SERVE_TEST_CUDA_IMAGE=1" in check.stdout and "tests/test_cuda_image.py" in check.stdout

def test_the_nvidia_runtime_is_told_to_expose_the_gpus():
    # Unset, the NVIDIA container runtime behaves as runc: no GPU in a non-NVIDIA base image.
    assert re.search(r"^ENV .*NVIDIA_VISIBLE_DEVICES=all", DOCKERFILE, re.M)
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in DOCKERFILE
