"""`serve`: read the model's config, start the HTTP front end and the worker group, supervise.

The port is bound first and /ping answers 503 (Unhealthy) while the model loads, then 200.
Start-up failures end with one line on stderr, `serve: error: ...`, and a non-zero exit code.
SIGTERM stops accepting, lets requests in flight finish (graceful_timeout), then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config.loader import ServingConfig, load_config
from .errors import StartupError
from .logging_setup import setup_logging
from .model_manager import ModelManager
from .metrics import prepare_multiprocess_dir
from .workers import multinode
from .workers.launcher import placement_note, world_size
from .workers.rundir import RunDir
from .workers.supervisor import Supervisor

log = logging.getLogger("container.serve")

DEFAULT_MODEL_DIR = "/opt/ml/model"
POLL_S = 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve", description="Serve a model directory over SageMaker's HTTP contract.")
    parser.add_argument("--model-dir", default=os.environ.get("SERVING_MODEL_DIR", DEFAULT_MODEL_DIR),
                        help="directory with serving.properties and/or model.py "
                             "(default: /opt/ml/model)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: SAGEMAKER_BIND_TO_PORT, else 8080)")
    parser.add_argument("--host", default=os.environ.get("SERVING_HOST", "0.0.0.0"),
                        help="address to bind (default: 0.0.0.0)")
    args, _unknown = parser.parse_known_args(argv)   # SageMaker runs `serve` with no flags
    return args


def resolve_port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return args.port
    raw = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise StartupError(f"SAGEMAKER_BIND_TO_PORT={raw!r} is not a port number (1-65535)")
    return int(raw)


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} ({exc.strerror}): stop what uses the "
                           "port or pass --port N (or set SAGEMAKER_BIND_TO_PORT)",
                           exit_code=1) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def install_requirements(config: ServingConfig) -> None:
    requirements = Path(config.model_dir) / "requirements.txt"
    if not requirements.is_file() or not config.setting("install_requirements"):
        return
    log.info("installing %s", requirements)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r",
         str(requirements)], cwd=config.model_dir, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["?"]
        raise StartupError(f"pip install -r {requirements} failed ({last[0]}): fix the file or "
                           "set install_requirements=false", exit_code=3)
    log.info("requirements installed")


class Server:
    def __init__(self, config: ServingConfig, listener: socket.socket):
        self.config = config
        self.listener = listener
        self.run_dir = RunDir.create()
        prepare_multiprocess_dir(self.run_dir.path)   # before any process that records metrics
        self.run_dir.write_atomic(self.run_dir.config_path, config.to_json())
        self.supervisor = Supervisor(config, self.run_dir)
        self.models = ModelManager(config, self.run_dir)
        self.frontend: subprocess.Popen | None = None
        self.stopping = False

    def start_frontend(self) -> None:
        fd = self.listener.fileno()
        self.frontend = subprocess.Popen(
            [sys.executable, "-m", "container.frontend.server", "--run-dir",
             str(self.run_dir.path), "--fd", str(fd)], pass_fds=(fd,))

    def request_stop(self, signum, _frame) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        self.supervisor.set_state("starting", "starting")
        self.start_frontend()
        try:
            install_requirements(self.config)
            self.supervisor.start()
            while not self.stopping:
                self.supervisor.poll()
                self.models.poll()
                if self.frontend.poll() is not None:
                    raise StartupError(f"the HTTP front end exited with code "
                                       f"{self.frontend.returncode} (see the log above)",
                                       exit_code=1)
                time.sleep(POLL_S)
        except BaseException:
            self.shutdown(drain=False)      # nothing to drain: serving cannot go on
            raise
        self.shutdown(drain=True)
        return 0

    def shutdown(self, drain: bool) -> None:
        """Front end first (it drains requests in flight), then the worker group."""
        grace = float(self.config.setting("graceful_timeout")) + 10 if drain else 5.0
        if drain:
            # New requests get 503 from now on; requests in flight carry on (the front end's
            # watcher fails requests only when the worker group changes or dies).
            self.supervisor.set_state("stopping", "server is shutting down")
        if self.frontend and self.frontend.poll() is None:
            # gunicorn: TERM = graceful (finish requests), QUIT = quick
            self.frontend.send_signal(signal.SIGTERM if drain else signal.SIGQUIT)
            try:
                self.frontend.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.frontend.kill()
        self.models.stop()
        self.supervisor.stop()
        self.listener.close()
        shutil.rmtree(self.run_dir.path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(os.environ.get("SERVING_LOG_LEVEL", "info"), "serve")
    try:
        config = load_config(args.model_dir)
        setup_logging(config.setting("log_level"), "serve")
        port = resolve_port(args)
        listener = bind_listener(args.host, port)
        log.info("model %s: engine=%s (%s), launcher=%s, tensor_parallel_degree=%d, "
                 "listening on %s:%d", config.model_name, config.engine, config.engine_kind,
                 config.launcher, config.tensor_parallel_degree, args.host, port)
        if config.gpu_count == 0:
            log.info("no GPU found (no /dev/nvidiaN device, SM_NUM_GPUS unset): serving on CPU")
        nodes = multinode.detect(os.environ, config.option("mpi_hosts"))
        nodes.ranks_per_node(world_size(config))        # one line if they do not divide
        if nodes.multi and not nodes.is_leader:
            from .workers.node_health import run_worker_node

            return run_worker_node(config, listener, nodes)
        if nodes.multi:
            log.info("leader of %d nodes (%s); %d ranks, %d per node", nodes.nnodes,
                     nodes.source, world_size(config), nodes.ranks_per_node(world_size(config)))
        note = placement_note(config)
        if note:
            log.warning("%s", note)
        server = Server(config, listener)
        signal.signal(signal.SIGTERM, server.request_stop)
        signal.signal(signal.SIGINT, server.request_stop)
        return server.run()
    except StartupError as exc:
        print(f"serve: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
