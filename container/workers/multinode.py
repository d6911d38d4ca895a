"""Where this server sits in a multi-node group: how many nodes, which one this is, the leader.

Read from the variables the standard launchers set, most specific first:
- ours: SERVING_NNODES, SERVING_NODE_RANK, SERVING_MASTER_ADDR, SERVING_MASTER_PORT;
- Kubernetes LeaderWorkerSet: LWS_GROUP_SIZE, LWS_WORKER_INDEX, LWS_LEADER_ADDRESS;
- SageMaker (multi-host containers): SM_HOSTS + SM_CURRENT_HOST, or the resource config file
  /opt/ml/input/config/resourceconfig.json ({"current_host", "hosts"}); the first host leads.
mpirun reads its hosts from option.mpi_hosts ("host1,host2" or "host:slots,...") or the
hostfile SERVING_HOSTFILE; the first host is the leader (where serve and rank 0 run).

The leader (node 0) runs the front end and rank 0; every other node runs its own ranks and
answers its own /ping (container/workers/node_health.py). Ranks are numbered node by node
(node_rank * ranks_per_node + local rank), so rank 0 is always on the leader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import StartupError

SAGEMAKER_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
DEFAULT_RENDEZVOUS_PORT = 29400


@dataclass(frozen=True)
class Nodes:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_RENDEZVOUS_PORT
    hosts: tuple[str, ...] = ()          # mpirun: "host" or "host:slots"; empty: none given
    hostfile: str | None = None
    source: str = "one node"

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    @property
    def is_leader(self) -> bool:
        return self.node_rank == 0

    def ranks_per_node(self, world_size: int) -> int:
        if world_size % self.nnodes:
            raise StartupError(
                f"{world_size} ranks (tensor_parallel_degree x pipeline_parallel_degree) do not "
                f"divide evenly over {self.nnodes} nodes ({self.source}): make the rank count "
                "a multiple of the node count")
        return world_size // self.nnodes


def _integer(value: str, name: str, minimum: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise StartupError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(text)


def _hosts_from_file(path: str) -> tuple[str, ...]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StartupError(f"SERVING_HOSTFILE={path} cannot be read ({exc.strerror}): point it "
                           "at an mpirun hostfile (one 'host slots=N' a line)") from None
    hosts = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(line.split()[0])
    if not hosts:
        raise StartupError(f"SERVING_HOSTFILE={path} lists no hosts")
    return tuple(hosts)


def _sagemaker(env: Mapping[str, str]) -> tuple[list[str], str] | None:
    if env.get("SM_HOSTS") and env.get("SM_CURRENT_HOST"):
        try:
            hosts = json.loads(env["SM_HOSTS"])
        except ValueError:
            raise StartupError(f"SM_HOSTS={env['SM_HOSTS']!r} is not a JSON list of host "
                               "names") from None
        return [str(h) for h in hosts], env["SM_CURRENT_HOST"]
    path = Path(env.get("SERVING_SM_RESOURCE_CONFIG", SAGEMAKER_RESOURCE_CONFIG))
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [str(h) for h in data["hosts"]], str(data["current_host"])
        except (ValueError, KeyError, TypeError):
            raise StartupError(f"{path} is not SageMaker's resource config "
                               '({"current_host": ..., "hosts": [...]})') from None
    return None


def detect(env: Mapping[str, str] | None = None, mpi_hosts: str | None = None) -> Nodes:
    env = os.environ if env is None else env
    port_text = env.get("SERVING_MASTER_PORT")
    port = _integer(port_text, "SERVING_MASTER_PORT", 1) if port_text else \
        DEFAULT_RENDEZVOUS_PORT
    hostfile = env.get("SERVING_HOSTFILE") or None
    hosts: tuple[str, ...] = ()
    if mpi_hosts:
        hosts = tuple(h.strip() for h in mpi_hosts.split(",") if h.strip())
    elif hostfile:
        hosts = _hosts_from_file(hostfile)
    if "SERVING_NNODES" in env:
        nnodes = _integer(env["SERVING_NNODES"], "SERVING_NNODES", 1)
        rank = _integer(env.get("SERVING_NODE_RANK", "0"), "SERVING_NODE_RANK", 0)
        master = env.get("SERVING_MASTER_ADDR") or (hosts[0].split(":")[0] if hosts else "")
        source = "SERVING_NNODES / SERVING_NODE_RANK / SERVING_MASTER_ADDR"
    elif "LWS_GROUP_SIZE" in env:
        nnodes = _integer(env["LWS_GROUP_SIZE"], "LWS_GROUP_SIZE", 1)
        rank = _integer(env.get("LWS_WORKER_INDEX", "0"), "LWS_WORKER_INDEX", 0)
        master = env.get("LWS_LEADER_ADDRESS", "")
        source = "LWS_GROUP_SIZE / LWS_WORKER_INDEX / LWS_LEADER_ADDRESS"
    elif _sagemaker(env) is not None:
        names, current = _sagemaker(env)
        if current not in names:
            raise StartupError(f"SageMaker's current host {current!r} is not among its hosts "
                               f"{names}")
        nnodes, rank, master = len(names), names.index(current), names[0]
        source = "SageMaker's SM_HOSTS / SM_CURRENT_HOST"
    elif hosts:
        nnodes, rank, master = len(hosts), 0, hosts[0].split(":")[0]
        source = "option.mpi_hosts" if mpi_hosts else f"SERVING_HOSTFILE={hostfile}"
    else:
        return Nodes(master_port=port)
    if rank >= nnodes:
        raise StartupError(f"node rank {rank} is outside a group of {nnodes} nodes ({source}): "
                           f"it must be 0..{nnodes - 1}")
    if nnodes > 1 and not master:
        raise StartupError(f"{nnodes} nodes but no leader address ({source}): set "
                           "SERVING_MASTER_ADDR (or LWS_LEADER_ADDRESS) to node 0's address")
    if hosts and len(hosts) != nnodes:
        raise StartupError(f"{len(hosts)} mpirun hosts but {nnodes} nodes ({source}): list "
                           "one host per node")
    return Nodes(nnodes, rank, master or "127.0.0.1", port, hosts, hostfile, source)
