"""Pipeline parallelism across two nodes: two network namespaces joined by a veth pair
(tests/netns_nodes.py), each running its ranks, launched by mpirun with a hostfile and by
torchrun's c10d rendezvous (SERVING_* and LeaderWorkerSet variables). Greedy tokens of 16
staggered requests (chunked prefill and preemption included) must equal TP=1's; a rank
killed on the second node fails requests within seconds, /ping turns unhealthy, and the
group comes back."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests

from conftest import ServeProcess, engine_stats, free_port, wait_for
from netns_nodes import NodeServe, TwoNodes, netns_available
from tiny_models import build_model, default_model_dir

pytestmark = pytest.mark.skipif(not netns_available(),
                                reason="needs root and `ip netns` (network namespaces)")

# small KV cache and token budget: long prompts prefill in chunks, and the batch preempts
PROPERTIES = ("option.num_kv_blocks=24\noption.kv_block_size=8\noption.max_rolling_batch_size=16\n"
              "option.max_rolling_batch_prefill_tokens=48\n")
PROMPTS = [f"request {i}: " + " ".join(["alpha", "beta", "gamma"][i % 3] for _ in range(3 * i))
           for i in range(16)]
NEW_TOKENS = 8


def staggered(server, prompts=PROMPTS, gap=0.05) -> list[list[int]]:
    """Greedy ids of each prompt, the requests sent `gap` seconds apart and running side by
    side. With no gap all arrive at once, which is what reliably overfills the KV cache: on a
    quiet machine staggered requests can finish before the cache runs out."""
    def one(i):
        time.sleep(gap * i)
        reply = requests.post(server.url("/invocations"), timeout=180, json={
            "inputs": prompts[i], "parameters": {"max_new_tokens": NEW_TOKENS,
                                                 "details": True, "ignore_eos": True}})
        assert reply.status_code == 200, reply.text
        return [t["id"] for t in reply.json()["details"]["tokens"]]

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, range(len(prompts))))


def model_copy(source: Path, target: Path, properties: str) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("serving.properties"))
    (target / "serving.properties").write_text(PROPERTIES + properties)
    return target


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    pair = TwoNodes(tmp_path_factory.mktemp("nodes"))
    try:
        pair.create()
    except Exception:
        pair.remove()
        raise
    yield pair
    pair.remove()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 3 layers: an uneven split (2 + 1); 6 query heads over 3 KV heads, as SmolLM2
    return build_model(tmp_path_factory.mktemp("tiny") / "llama", "llama",
                       num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                       hidden_size=96, intermediate_size=160)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    with ServeProcess(model_copy(tiny, tmp_path_factory.mktemp("ref") / "m",
                                 "option.tensor_parallel_degree=1\n")) as server:
        return staggered(server)


def leader_and_worker(nodes, model_dir, launcher_env: list[dict]):
    """serve on each node (workers first: the leader is healthy once every rank loaded)."""
    servers = []
    for node, env in reversed(list(enumerate(launcher_env))):
        server = NodeServe(nodes, node, model_dir, {**nodes.env(), **env},
                           nodes.front if node == 0 else nodes.addr[node])
        servers.insert(0, server.start(wait=node == 0))
    return servers


def stop_all(servers):
    for server in servers:
        server.stop()


def ranks(server) -> list:
    described = requests.get(server.url(f"/models/{server.model_name()}"), timeout=10).json()[0]
    return described["workers"][0]["rankPids"]


@pytest.mark.parametrize("tp", [1, 2], ids=["pp2", "pp2xtp2"])
def test_mpirun_hostfile(nodes, tiny, reference, tmp_path, tp):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{nodes.addr[0]} slots={tp}\n{nodes.addr[1]} slots={tp}\n")
    split = "option.pipeline_layer_split=1,2\n" if tp == 2 else ""
    model = model_copy(tiny, tmp_path / "m", f"engine=MPI\noption.pipeline_parallel_degree=2\n"
                       f"option.tensor_parallel_degree={tp}\n{split}")
    # node B's serve only answers its own /ping: the leader's mpirun starts its ranks
    servers = leader_and_worker(nodes, model, [
        {"SERVING_HOSTFILE": str(hostfile)},
        {"SERVING_NNODES": "2", "SERVING_NODE_RANK": "1", "SERVING_MASTER_ADDR": nodes.addr[0]}])
    try:
        pids = ranks(servers[0])
        assert len(pids) == 2 * tp
        # half the ranks run in node B's network namespace
        spaces = [os.readlink(f"/proc/{pid}/ns/net") for pid in pids]
        assert len(set(spaces)) == 2 and spaces[:tp] == [spaces[0]] * tp, spaces
        assert requests.get(servers[1].url("/ping"), timeout=5).status_code == 200
        assert staggered(servers[0]) == reference
    finally:
        stop_all(servers)


def _rendezvous_env(nodes, port: int, lws: bool) -> list[dict]:
    if lws:    # Kubernetes LeaderWorkerSet's names
        return [{"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": str(i),
                 "LWS_LEADER_ADDRESS": nodes.addr[0], "SERVING_MASTER_PORT": str(port),
                 "SERVING_NODE_ADDR": nodes.addr[i]}
                for i in range(2)]
    return [{"SERVING_NNODES": "2", "SERVING_NODE_RANK": str(i),
             "SERVING_MASTER_ADDR": nodes.addr[0], "SERVING_MASTER_PORT": str(port),
             # both namespaces share one host name: say which address is this node's
             "SERVING_NODE_ADDR": nodes.addr[i]}
            for i in range(2)]


@pytest.fixture(scope="module")
def torchrun_pp2(nodes, tiny, tmp_path_factory):
    model = model_copy(tiny, tmp_path_factory.mktemp("trpp2") / "m",
                       "option.pipeline_parallel_degree=2\noption.tensor_parallel_degree=1\n")
    servers = leader_and_worker(nodes, model, _rendezvous_env(nodes, free_port(), lws=False))
    yield servers
    stop_all(servers)


def test_torchrun_rendezvous_pp2(torchrun_pp2, reference):
    leader, worker = torchrun_pp2
    assert requests.get(worker.url("/ping"), timeout=5).status_code == 200
    assert requests.get(worker.url("/invocations"), timeout=5).status_code == 404
    assert staggered(leader) == reference
    assert staggered(leader, gap=0) == reference
    stats = engine_stats(leader)
    assert stats["preemptions"] > 0 and stats["chunked_prefill_steps"] > 0, stats


def test_torchrun_lws_variables_pp2xtp2(nodes, tiny, reference, tmp_path):
    model = model_copy(tiny, tmp_path / "m",
                       "option.pipeline_parallel_degree=2\noption.tensor_parallel_degree=2\n")
    servers = leader_and_worker(nodes, model, _rendezvous_env(nodes, free_port(), lws=True))
    try:
        assert staggered(servers[0]) == reference
    finally:
        stop_all(servers)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _worker_ranks(server) -> list[int]:
    out = []
    for pid in _descendants(server.process.pid):
        try:
            if b"container.workers.worker_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def test_rank_killed_on_second_node_fails_fast_and_recovers(torchrun_pp2, reference):
    leader, worker = torchrun_pp2
    victims = _worker_ranks(worker)
    assert victims, worker.log
    stream = requests.post(leader.url("/invocations"), stream=True, timeout=60, json={
        "inputs": "the model", "stream": True,      # as long as the small KV cache allows
        "parameters": {"max_new_tokens": 180, "ignore_eos": True}})
    lines = stream.iter_lines()
    next(lines)                                    # generating
    killed = time.monotonic()
    os.kill(victims[0], signal.SIGKILL)
    received = list(lines)                          # the stream ends with an error
    assert time.monotonic() - killed < 15
    assert received and b"error" in received[-1].lower(), received[-3:]
    wait_for(lambda: requests.get(leader.url("/ping"), timeout=2).status_code == 503,
             timeout=15)
    wait_for(lambda: requests.get(leader.url("/ping"), timeout=2).status_code == 200,
             timeout=150, interval=0.5)
    wait_for(lambda: requests.get(worker.url("/ping"), timeout=2).status_code == 200,
             timeout=30, interval=0.5)
    assert staggered(leader, PROMPTS[:4]) == reference[:4]


@pytest.mark.skipif(default_model_dir() is None, reason="SmolLM2 is not built (make)")
def test_smollm2_pp2_over_two_nodes(nodes, tmp_path):
    # PP=2 only: PP=2 x TP=2 (4 SmolLM2 ranks on 2 cores) costs minutes more for no new path
    source = default_model_dir()
    prompts = [f"Request {i}: " + "The capital of France is Paris. " * (i % 5) for i in range(16)]
    with ServeProcess(model_copy(source, tmp_path / "ref", "")) as server:
        expected = staggered(server, prompts)
    model = model_copy(source, tmp_path / "pp", "option.pipeline_parallel_degree=2\n"
                       "option.tensor_parallel_degree=1\n")
    servers = leader_and_worker(nodes, model, _rendezvous_env(nodes, free_port(), lws=False))
    try:
        assert staggered(servers[0], prompts) == expected
    finally:
        stop_all(servers)
