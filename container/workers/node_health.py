"""`serve` on a worker node (node rank > 0): this node's ranks, and its own /ping.

No front end runs here: requests go to the leader. Under torchrun this node supervises its own
torchrun agent (which joins the leader's c10d rendezvous) and restarts it when the group goes
down, as the leader does; /ping says 200 only while its ranks are loaded. Under mpirun the
leader's mpirun starts this node's ranks (over ssh), so /ping only says the node is up.
Kubernetes' probes on a LeaderWorkerSet's worker pods read this /ping.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..config.loader import ServingConfig
from .multinode import Nodes
from .rundir import RunDir
from .supervisor import Supervisor

log = logging.getLogger("container.serve")


class _Health(BaseHTTPRequestHandler):
    report = staticmethod(lambda: (200, {}))

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.split("?")[0] == "/ping":
            code, body = self.report()
        else:
            code, body = 404, {"code": 404, "type": "NotFound",
                               "message": "this is a worker node: send requests to the leader"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):      # probes every few seconds: keep the log quiet
        pass


def _serve_health(listener: socket.socket, report) -> ThreadingHTTPServer:
    handler = type("Health", (_Health,), {"report": staticmethod(report)})
    server = ThreadingHTTPServer(listener.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_worker_node(config: ServingConfig, listener: socket.socket, nodes: Nodes) -> int:
    role = f"worker node {nodes.node_rank} of {nodes.nnodes} (leader {nodes.master_addr})"
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    if config.launcher == "mpirun":
        log.info("%s: the leader's mpirun starts this node's ranks; answering /ping", role)
        server = _serve_health(listener, lambda: (200, {"status": "Healthy", "node": role}))
        stopping.wait()
        server.shutdown()
        return 0
    os.environ["SERVE_NODE_ROLE"] = "worker"     # its local rank 0 reports the ranks loaded
    run_dir = RunDir.create()
    run_dir.write_atomic(run_dir.config_path, config.to_json())
    supervisor = Supervisor(config, run_dir)

    def report():
        status = supervisor.status
        body = {"status": "Healthy" if status.ready else "Unhealthy", "node": role,
                "state": status.state, "message": status.message}
        return (200 if status.ready else 503), body

    server = _serve_health(listener, report)
    log.info("%s: starting this node's ranks", role)
    try:
        supervisor.start()
        while not stopping.is_set():
            supervisor.poll()
            time.sleep(0.1)
    finally:
        server.shutdown()
        supervisor.stop()
        shutil.rmtree(run_dir.path, ignore_errors=True)
    return 0
