"""The command line that starts a worker group: plain python, torchrun or mpirun.

Built as a list (never a shell string). Each group gets a free MASTER_PORT so two servers on
one host never collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

from ..config.loader import ServingConfig

WORKER_MODULE = "container.workers.worker_main"
# Variables every rank needs; mpirun forwards only what -x names.
_FORWARDED = ("SERVE_RUN_DIR", "SERVE_GENERATION", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH",
              "PROMETHEUS_MULTIPROC_DIR", "PATH", "HOME", "CUDA_VISIBLE_DEVICES", "AWS_ENDPOINT_URL",
              "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
              "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
              # SageMaker / ECS task roles, EKS web identity, IMDS switch: the role chain
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
              "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
              "AWS_EC2_METADATA_DISABLED",
              "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT",
              "SERVING_DOWNLOAD_DIR", "TORCH_EXTENSIONS_DIR", "NCCL_NVLS_ENABLE",
              "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS", "OMP_NUM_THREADS",
              # the native engine's GPU fast paths, each with an off switch (README)
              "SERVE_KERNELS", "SERVE_PDL", "SERVE_SYMMETRIC_ALLREDUCE",
              "SERVE_FUSED_ALLREDUCE_NORM")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_command(config: ServingConfig, run_dir: str, generation: int,
                  master_port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """Return (argv, environment) for one worker group."""
    tp = config.tensor_parallel_degree
    env = dict(os.environ)
    env.update({
        "SERVE_RUN_DIR": str(run_dir),
        "SERVE_GENERATION": str(generation),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port or free_port()),
        "PYTHONUNBUFFERED": "1",
    })
    # Ranks share the cores: without this each would start one thread per core.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // tp)))
    worker = [sys.executable, "-m", WORKER_MODULE]
    if config.launcher == "python":
        return worker, env
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                f"--nproc_per_node={tp}", "--max_restarts=0", "--master_addr=127.0.0.1",
                f"--master_port={env['MASTER_PORT']}", "--module", WORKER_MODULE], env
    if config.launcher == "mpirun":
        mpirun = shutil.which("mpirun") or "mpirun"
        argv = [mpirun, "-np", str(tp), "--bind-to", "none", "--oversubscribe"]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        for name in _FORWARDED:
            if name in env:
                argv += ["-x", name]
        return argv + worker, env
    raise ValueError(f"unknown launcher {config.launcher!r}")


def placement_note(config: ServingConfig) -> str | None:
    """Say plainly how the model sits on the GPUs when it does not use all of them."""
    gpus, tp = config.gpu_count, config.tensor_parallel_degree
    if gpus <= tp:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
    used, idle = ids[:tp], ids[tp:gpus]
    return (f"tensor_parallel_degree={tp} uses {tp} of the {gpus} visible GPUs "
            f"({','.join(used)}); this server runs ONE model copy and leaves GPUs "
            f"{','.join(idle)} idle. To serve more copies, start another server with "
            f"CUDA_VISIBLE_DEVICES={','.join(idle[:tp])} and another port; to pin this one, set "
            "CUDA_VISIBLE_DEVICES")
