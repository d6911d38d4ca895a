"""The serving core's own overhead: an echo handler behind `serve`, at 1, 16 and 64 users.

`python -m container.bench.handler_bench` (or `make bench`) writes a DJL-style echo model.py
to a temporary directory, serves it, drives /invocations with the load generator and prints
requests/s and p50/p99 latency per concurrency; the JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from .backends import handler
from .metrics import summarize
from .results import device_name, save, table
from .runner import run
from .serve_process import BenchServer
from .workload import Prompt

ECHO = '''
from djl_python import Input, Output


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return Output().add_as_json(inputs.get_as_json())
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.bench.handler_bench")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests-per-user", type=int, default=50)
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args(argv)
    model_dir = Path(tempfile.mkdtemp(prefix="echo-"))
    (model_dir / "model.py").write_text(ECHO)
    payload = json.dumps({"inputs": "hello", "parameters": {"n": 1}}).encode()
    call = handler(payload, "application/json")
    report = {"label": "handler_echo", "device": device_name(), "backend": "handler",
              "levels": []}
    with BenchServer(model_dir) as server:
        asyncio.run(run(call, server.url, [Prompt("", [], 1)] * 20, concurrency=4))   # warm up
        for users in (int(c) for c in args.concurrency.split(",")):
            prompts = [Prompt("", [], 1)] * (users * args.requests_per_user)
            results, duration = asyncio.run(run(call, server.url, prompts, concurrency=users))
            level = {"concurrency": users, **summarize(results, duration)}
            report["levels"].append(level)
    path = save(report, args.results_dir, "handler_echo")
    rows = [{"users": lvl["concurrency"], "req/s": lvl["requests_per_s"],
             "p50 ms": lvl["e2e_ms"]["p50"], "p99 ms": lvl["e2e_ms"]["p99"],
             "failed": lvl["failed"]} for lvl in report["levels"]]
    print(f"# echo handler through serve on {report['device']}")
    print(table(rows, [(k, k) for k in ("users", "req/s", "p50 ms", "p99 ms", "failed")]))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
