"""Two "nodes" on one machine: two network namespaces joined by a veth pair, for multi-node
tests (needs root and `ip netns`).

    node A (leader) ── pplink 10.231.K.1/24 ◀──veth──▶ pplink 10.231.K.2/24 ── node B
        └─ ppfront 10.232.K.2/24 ◀──veth──▶ 10.232.K.1/24 in the test's own namespace

Both ends of the node link carry the same interface name, so GLOO_SOCKET_IFNAME=pplink holds
on either node. The test process reaches the leader's HTTP port over the second pair. mpirun
reaches node B through a launch agent that runs orted with `ip netns exec` instead of ssh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ServeProcess

LINK = "pplink"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"ppprobe{os.getpid() % 100000}"
    if _ip("netns", "add", name, check=False).returncode:
        return False
    _ip("netns", "del", name, check=False)
    return True


class TwoNodes:
    def __init__(self, tmp: Path):
        key = os.getpid() % 200 + 20
        self.tag = f"{os.getpid() % 100000}"
        self.ns = (f"ppA{self.tag}", f"ppB{self.tag}")
        self.addr = (f"10.231.{key}.1", f"10.231.{key}.2")
        self.front = f"10.232.{key}.2"           # node A, as the test process reaches it
        self._root_if = f"ppr{self.tag}"
        self.agent = tmp / "netns_rsh"
        self.agent.write_text(f"#!/bin/sh\n# mpirun's launch agent: host, then orted's command\n"
                              f"shift\nexec ip netns exec {self.ns[1]} /bin/sh -c \"$*\"\n")
        self.agent.chmod(0o755)

    def create(self) -> "TwoNodes":
        a, b = self.ns
        for ns in self.ns:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"ppa{self.tag}", "type", "veth", "peer", "name", f"ppb{self.tag}")
        for ns, end, address in ((a, f"ppa{self.tag}", self.addr[0]),
                                 (b, f"ppb{self.tag}", self.addr[1])):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "link", "set", end, "name", LINK)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", LINK)
            _ip("-n", ns, "link", "set", LINK, "up")
        _ip("link", "add", self._root_if, "type", "veth", "peer", "name", f"ppf{self.tag}")
        _ip("link", "set", f"ppf{self.tag}", "netns", a)
        _ip("-n", a, "link", "set", f"ppf{self.tag}", "name", "ppfront")
        _ip("-n", a, "addr", "add", f"{self.front}/24", "dev", "ppfront")
        _ip("-n", a, "link", "set", "ppfront", "up")
        _ip("addr", "add", self.front.rsplit(".", 1)[0] + ".1/24", "dev", self._root_if)
        _ip("link", "set", self._root_if, "up")
        # the test process reaches node B too (its own /ping), routed through node A
        _ip("netns", "exec", a, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _ip("-n", b, "route", "add", self.front.rsplit(".", 1)[0] + ".0/24", "via", self.addr[0])
        _ip("route", "add", self.addr[0].rsplit(".", 1)[0] + ".0/24", "via", self.front)
        return self

    def remove(self) -> None:
        for ns in self.ns:       # deleting a namespace deletes the veth ends inside it
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self._root_if, check=False)

    def env(self) -> dict[str, str]:
        """What every node's serve needs: the collectives on the node link; mpirun's agent."""
        return {"GLOO_SOCKET_IFNAME": LINK, "OMPI_MCA_plm_rsh_agent": str(self.agent),
                "OMPI_MCA_oob_tcp_if_include": LINK, "NO_PROXY": "*",
                "SERVING_COLLECTIVE_TIMEOUT": "60"}


class NodeServe(ServeProcess):
    """serve inside one of the namespaces, listening on every address there."""

    def __init__(self, nodes: TwoNodes, node: int, model_dir, env: dict, address: str):
        super().__init__(model_dir, env)
        self.ns, self.address = nodes.ns[node], address

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self, wait: bool = True, timeout: float = 180) -> "NodeServe":
        import tempfile
        import threading

        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "container", "--model-dir",
             self.model_dir, "--host", "0.0.0.0", "--port", str(self.port)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=tempfile.gettempdir())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_healthy(timeout)
        return self
