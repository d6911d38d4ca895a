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
from . import multinode

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
              "SERVE_FUSED_ALLREDUCE_NORM",
              # several nodes: which interface the collectives use, the config for ranks whose
              # node has no copy of the run directory, the collective timeout
              "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "SERVE_CONFIG",
              "SERVING_COLLECTIVE_TIMEOUT")


def world_size(config: ServingConfig) -> int:
    """Ranks of one model copy: tensor_parallel_degree x pipeline_parallel_degree."""
    return config.tensor_parallel_degree * pipeline_degree(config)


def pipeline_degree(config: ServingConfig) -> int:
    raw = str(config.option("pipeline_parallel_degree", "1") or "1").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_command(config: ServingConfig, run_dir: str, generation: int,
                  master_port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """Return (argv, environment) for one worker group (this node's part of it)."""
    tp = world_size(config)
    nodes = multinode.detect(os.environ, config.option("mpi_hosts"))
    per_node = nodes.ranks_per_node(tp)
    env = dict(os.environ)
    env.update({
        "SERVE_RUN_DIR": str(run_dir),
        "SERVE_GENERATION": str(generation),
        "MASTER_ADDR": nodes.master_addr if nodes.multi else "127.0.0.1",
        "MASTER_PORT": str(master_port or free_port()),
        "PYTHONUNBUFFERED": "1",
    })
    # Ranks share the cores: without this each would start one thread per core.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // per_node)))
    worker = [sys.executable, "-m", WORKER_MODULE]
    if nodes.multi:
        return _multi_node_command(config, nodes, tp, per_node, worker, env)
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


def _multi_node_command(config: ServingConfig, nodes: multinode.Nodes, world: int,
                        per_node: int, worker: list[str], env: dict[str, str]):
    """torchrun with c10d rendezvous on every node, or one mpirun on the leader over a
    hostfile. Ranks are numbered node by node so rank 0 (the scheduler) is on the leader."""
    env["SERVE_NODE_RANK"] = str(nodes.node_rank)
    env["SERVE_RANKS_PER_NODE"] = str(per_node)
    if config.launcher == "mpirun":
        if not nodes.is_leader:
            raise ValueError("mpirun starts every node's ranks from the leader")
        mpirun = shutil.which("mpirun") or "mpirun"
        env["SERVE_CONFIG"] = config.to_json()      # for nodes without the run directory
        argv = [mpirun, "-np", str(world), "--bind-to", "none", "--map-by",
                f"ppr:{per_node}:node"]
        if nodes.hostfile and not config.option("mpi_hosts"):
            argv += ["--hostfile", nodes.hostfile]
        else:
            argv += ["--host", ",".join(h if ":" in h else f"{h}:{per_node}"
                                        for h in nodes.hosts)]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        for name in _FORWARDED + ("SERVE_NODE_RANK", "SERVE_RANKS_PER_NODE"):
            if name in env:
                argv += ["-x", name]
        return argv + worker, env
    # c10d: the leader's agent hosts the rendezvous store at SERVING_MASTER_ADDR:PORT; ranks
    # connect to it as clients, so our own numbering (dist_env) holds whoever joins first.
    local = ([f"--local_addr={os.environ['SERVING_NODE_ADDR']}"]
             if os.environ.get("SERVING_NODE_ADDR") else [])   # else the host name's address
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes.nnodes}", *local,
            f"--nproc_per_node={per_node}", "--max_restarts=0", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={nodes.master_addr}:{nodes.master_port}", "--rdzv_id=serve",
            f"--rdzv_conf=is_host={1 if nodes.is_leader else 0}", "--module",
            WORKER_MODULE], env


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
