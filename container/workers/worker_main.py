"""Entry point of every rank of the worker group (`python -m container.workers.worker_main`).

Reads the config serve wrote into the run directory, loads the model (handler or LLM engine),
then rank 0 serves the front end while the other ranks follow rank 0's steps. A load failure
is written as one line to the run directory for serve to print, and the process exits 3.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import traceback

from ..config.loader import ServingConfig
from ..errors import StartupError
from ..logging_setup import setup_logging
from . import dist_env
from .ipc_server import IpcServer
from .rundir import RunDir

log = logging.getLogger("container.worker")

LOAD_FAILED_EXIT = 3


def _die_with_parent() -> None:
    """Linux: get SIGTERM when serve (or torchrun/mpirun) goes away, so no rank is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def build_service(config: ServingConfig, dist: dist_env.DistEnv, run_dir: RunDir,
                  generation: int):
    kind = config.engine_kind
    if kind == "handler":
        from handlers.model_loader import load_handler

        from .group import GroupChannel
        from .handler_service import HandlerService

        if dist.world_size > 1 and config.engine == "DeepSpeed":
            # DJL DeepSpeed model.py files (the SageMaker BLOOM/OPT article's) call
            # torch.distributed, e.g. dist.barrier(), before deepspeed.init_inference would
            # create the group: have it ready. deepspeed.init_distributed() then reuses it.
            from .group import init_process_group

            init_process_group(dist)
        channel = GroupChannel.create(dist, run_dir, generation) if dist.world_size > 1 else None
        if dist.is_driver:
            from .handler_metrics import capture_handler_metrics

            capture_handler_metrics()
        if config.options.get("model_id", "").startswith("s3://"):
            # as LMI does: handlers get the local copy of an s3:// model_id (fetched once per host)
            from ..storage.resolve import resolve_model_dir

            config.options["model_id"] = str(resolve_model_dir(config))
        handler = load_handler(config.model_dir, config.options)
        service = HandlerService(config, handler, dist.rank, dist.world_size, channel)
        service.initialize()
        if dist.world_size > 1 and config.engine == "DeepSpeed":
            from ..engines.deepspeed_shm import release_after_handler_init

            release_after_handler_init(dist.rank)      # DeepSpeed leaves /dev/shm segments
        return service
    if kind == "native":
        from ..engine.service import build_native_service

        return build_native_service(config, dist)
    if kind == "deepspeed":
        from ..engines.deepspeed_engine import build_deepspeed_service

        return build_deepspeed_service(config, dist)
    if kind == "trtllm":
        from ..engines.trtllm import build_trtllm_service

        return build_trtllm_service(config, dist)
    raise StartupError(f"engine kind {kind!r} is not available yet")


def main() -> int:
    _die_with_parent()
    run_dir = RunDir(os.environ["SERVE_RUN_DIR"])
    generation = int(os.environ["SERVE_GENERATION"])
    if not run_dir.config_path.is_file() and os.environ.get("SERVE_CONFIG"):
        # a rank mpirun started on another node: the leader's run directory is not here
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_atomic(run_dir.config_path, os.environ["SERVE_CONFIG"])
    config = ServingConfig.from_json(run_dir.config_path.read_text(encoding="utf-8"))
    dist = dist_env.detect()
    dist_env.export(dist, config.tensor_parallel_degree)
    setup_logging(config.setting("log_level"), f"worker{dist.rank}")
    run_dir.write_atomic(_pid_path(run_dir, generation, dist.rank), str(os.getpid()))
    try:
        service = build_service(config, dist, run_dir, generation)
    except StartupError as exc:
        return _fail(run_dir, generation, dist, str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one line for serve
        log.error("model failed to load:\n%s", traceback.format_exc())
        return _fail(run_dir, generation, dist,
                     f"the model failed to load: {type(exc).__name__}: {exc}", LOAD_FAILED_EXIT)
    if not dist.is_driver:
        if os.environ.get("SERVE_NODE_ROLE") == "worker" and dist.local_rank == 0:
            # a worker node's serve (node_health.py) reports its own ranks loaded
            run_dir.write_atomic(run_dir.ready_path(generation), json.dumps({"rank": dist.rank}))
        service.follow()
        return 0
    ipc = IpcServer(run_dir.ipc_address, generation, int(config.setting("job_queue_size")))
    ipc.start()
    info = dict(service.model_info(), pid=os.getpid(), ranks=dist.world_size,
                rank_pids=_rank_pids(run_dir, generation, dist.world_size))
    if info.get("kind") == "llm":
        _log_tool_parser(config, info["tokenizer_dir"])

    def announce_ready() -> None:
        run_dir.write_atomic(run_dir.ready_path(generation), json.dumps(info))
        log.info("worker ready (generation %d)", generation)

    service.serve(ipc, announce_ready)
    return 0


def _log_tool_parser(config, tokenizer_dir: str) -> None:
    """Say which tool-call parser tool_choice=auto will use (the front end decides the same
    way from the same template)."""
    from ..text.tokenizer import TextTokenizer
    from ..text.tool_format import tool_parser_for

    try:
        templates = TextTokenizer(tokenizer_dir).chat_templates
    except (OSError, ValueError):         # no tokenizer.json: the routes will say so
        return
    parser, reason = tool_parser_for(config.option("tool_call_parser"), templates)
    if parser:
        log.info("tool calls (tool_choice=auto): %s parser (%s)", parser, reason)
    else:
        log.info("tool calls (tool_choice=auto): no parser (%s); set option.tool_call_parser "
                 "to offer it", reason)


def _pid_path(run_dir: RunDir, generation: int, rank: int):
    return run_dir.path / f"rank-{generation}-{rank}.pid"


def _rank_pids(run_dir: RunDir, generation: int, world_size: int) -> list[int | None]:
    """Every rank's pid (each wrote it at start), for operators and fault tests."""
    pids = []
    for rank in range(world_size):
        try:
            pids.append(int(_pid_path(run_dir, generation, rank).read_text()))
        except (OSError, ValueError):
            pids.append(None)
    return pids


def _fail(run_dir: RunDir, generation: int, dist, message: str, code: int) -> int:
    if dist.is_driver:
        run_dir.write_atomic(run_dir.error_path(generation), " ".join(message.split()))
    log.error("%s", message)
    return code if code else LOAD_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
