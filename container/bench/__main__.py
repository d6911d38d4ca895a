"""Load generator: `python -m container.bench --url http://127.0.0.1:8080 --concurrency 1,8,32`.

Streams requests to our /invocations (LMI), the OpenAI routes, a handler model, or a SageMaker
endpoint (boto3), with N concurrent users or a request rate, and reports output tok/s, req/s,
TTFT, ITL, TPOT, end-to-end latency (p50/p90/p99) and per-user tok/s. Results go to
bench/results/<label>.json; --plot adds a PNG of throughput and latency against concurrency.
`python -m container.bench.offline` drives the engine in-process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from . import backends
from .metrics import summarize
from .results import device_name, flat, save, table
from .runner import run
from .workload import random_prompts

COLUMNS = [("users", "concurrency"), ("req/s", "requests_per_s"),
           ("out tok/s", "output_tokens_per_s"), ("TTFT p50", "ttft_ms.p50"),
           ("TTFT p99", "ttft_ms.p99"), ("ITL mean", "itl_ms.mean"), ("TPOT p50", "tpot_ms.p50"),
           ("E2E p50", "e2e_ms.p50"), ("E2E p99", "e2e_ms.p99"),
           ("user tok/s", "per_user_tokens_per_s.mean"), ("failed", "failed")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m container.bench", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--backend", default="lmi",
                   choices=["lmi", "openai-completions", "openai-chat", "handler", "sagemaker"])
    p.add_argument("--model", default="model", help="model name sent on OpenAI routes")
    p.add_argument("--adapters", default="",
                   help="comma list of LoRA adapters, given to the prompts in turn")
    p.add_argument("--tokenizer", help="tokenizer dir, for prompts of exact token length")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--vary", type=float, default=0.0, help="length jitter, e.g. 0.25")
    p.add_argument("--concurrency", default="1", help="comma list of concurrent users")
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--no-ignore-eos", action="store_true")
    p.add_argument("--payload", default='{"inputs": "hello"}', help="handler backend body")
    p.add_argument("--endpoint-name", help="sagemaker backend: endpoint name")
    p.add_argument("--region")
    p.add_argument("--endpoint-url", help="sagemaker backend: runtime URL (local endpoint)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--label", default="bench")
    p.add_argument("--engine", default="serve")
    p.add_argument("--peer", default="")
    p.add_argument("--results-dir", default="bench/results")
    p.add_argument("--plot", action="store_true")
    return p.parse_args(argv)


def pick_backend(args):
    if args.backend == "handler":
        return backends.handler(args.payload.encode(), "application/json")
    if args.backend == "sagemaker":
        return backends.sagemaker(args.endpoint_name, args.region, args.endpoint_url)
    return backends.BACKENDS[args.backend]


def main(argv=None) -> int:
    args = parse_args(argv)
    call = pick_backend(args)
    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = random_prompts(args.tokenizer, args.num_prompts, args.input_len, args.output_len,
                             vary=args.vary)
    adapters = [name for name in args.adapters.split(",") if name]
    for index, prompt in enumerate(prompts if adapters else []):
        prompt.adapter = adapters[index % len(adapters)]
    ignore_eos = not args.no_ignore_eos
    if args.warmup:
        asyncio.run(run(call, args.url, prompts[:args.warmup], concurrency=args.warmup,
                        ignore_eos=ignore_eos, model=args.model))
    report = {"label": args.label, "device": device_name(), "backend": args.backend,
              "url": args.url, "engine": args.engine, "peer": args.peer,
              "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len,
                           "output_len": args.output_len, "vary": args.vary,
                           "request_rate": args.request_rate, "ignore_eos": ignore_eos,
                           "adapters": adapters},
              "levels": []}
    for users in levels:
        results, duration = asyncio.run(run(call, args.url, prompts, concurrency=users,
                                            request_rate=args.request_rate,
                                            ignore_eos=ignore_eos, model=args.model))
        level = {"concurrency": users, **summarize(results, duration)}
        report["levels"].append(level)
        print(f"users={users}: {level['completed']}/{level['requests']} ok, "
              f"{level['output_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    path = save(report, args.results_dir, args.label)
    print(f"# {args.label} on {report['device']} ({args.backend}, {args.input_len} in / "
          f"{args.output_len} out, {args.num_prompts} requests)")
    print(table([flat(level) for level in report["levels"]], COLUMNS))
    print(f"saved {path}")
    if args.plot:
        from .plot import plot

        print(f"plot {plot([path], path.with_suffix('.png'), args.label)}")
    return 0 if all(level["failed"] == 0 for level in report["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
