"""Structured output under load: W2-shaped (every request at once, long prompts, fixed output
length), half the requests constrained by a json_schema, against the same load unconstrained.

`python -m container.bench.structured_bench --model-dir DIR` serves the model once and runs
the two configurations interleaved (free, mixed, free, mixed, ...) so that a machine shared
with other work slows both alike; the figure is the median over the pairs of the ratio of
output tok/s, mixed / free (one full-size round of each is a discarded warm-up).
A constrained request cannot stop before its output length: its schema asks for more array
items than fit, so both configurations generate the same number of tokens (the free ones
ignore EOS). Prints a table and saves JSON under bench/results/ with the device named.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

from .backends import _openai
from .metrics import summarize
from .results import device_name, save, table
from .runner import run
from .serve_process import BenchServer
from .workload import Prompt, random_prompts

# strings and bounded numbers, more items than any output length here can hold
SCHEMA = {"type": "object", "properties": {
    "readings": {"type": "array", "minItems": 200, "items": {
        "type": "object", "properties": {
            "station": {"type": "string", "maxLength": 12},
            "kind": {"enum": ["rain", "wind", "sun"]},
            "value": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["station", "kind", "value"], "additionalProperties": False}}},
    "required": ["readings"], "additionalProperties": False}


def request_for(constrained: bool):
    async def call(session, url, prompt: Prompt, ignore_eos: bool, model: str):
        body = {"model": model, "prompt": prompt.token_ids, "max_tokens": prompt.output_len,
                "stream": True, "temperature": 0,
                "stream_options": {"include_usage": True}}
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "readings", "schema": SCHEMA}}
        else:
            body["ignore_eos"] = True
        return await _openai(session, f"{url}/v1/completions", body, prompt,
                             lambda choice: choice.get("text"))
    return call


def mixed_call(constrained_every: int):
    """Requests alternate: every `constrained_every`-th one is constrained (0: none)."""
    free, constrained = request_for(False), request_for(True)
    counter = {"n": 0}

    async def call(session, url, prompt, ignore_eos, model):
        counter["n"] += 1
        use = constrained_every and counter["n"] % constrained_every == 0
        return await (constrained if use else free)(session, url, prompt, ignore_eos, model)
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.bench.structured_bench")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--requests", type=int, default=16, help="all sent at once (W2 shape)")
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of (free, mixed) runs")
    parser.add_argument("--results-dir", default="bench/results")
    parser.add_argument("--server-log", help="write serve's output here")
    args = parser.parse_args(argv)
    prompts = random_prompts(args.model_dir, args.requests, args.input_len, args.output_len,
                             seed=2)
    configs = {"free": mixed_call(0), "mixed": mixed_call(2)}
    rows = []
    output = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL
    with BenchServer(args.model_dir, output=output) as server:
        print(f"serve ready in {time.perf_counter() - server.started:.0f} s", flush=True)
        for name in configs:     # warm up at full size (discarded): the grammar compiles once
            asyncio.run(run(configs[name], server.url, prompts, concurrency=len(prompts)))
        print("warmed up", flush=True)
        for round_ in range(args.rounds):
            for name, call in configs.items():
                results, duration = asyncio.run(run(call, server.url, prompts,
                                                    concurrency=len(prompts)))
                summary = summarize(results, duration)
                rows.append({"round": round_ + 1, "config": name,
                             "output_tok_s": summary["output_tokens_per_s"],
                             "output_tokens": summary["output_tokens"],
                             "duration_s": duration, "tpot_p50_ms": summary["tpot_ms"]["p50"],
                             "ttft_p50_ms": summary["ttft_ms"]["p50"],
                             "failed": summary["failed"]})
                print(f"round {round_ + 1} {name}: {summary['output_tokens_per_s']:.1f} tok/s",
                      flush=True)
    free = [r["output_tok_s"] for r in rows if r["config"] == "free"]
    mixed = [r["output_tok_s"] for r in rows if r["config"] == "mixed"]
    pairs = [m / f for f, m in zip(free, mixed)]
    ratio = statistics.median(pairs)
    report = {"label": "structured_w2_cpu", "device": device_name(),
              "model_dir": args.model_dir,
              "workload": {"requests": args.requests, "input_len": args.input_len,
                           "output_len": args.output_len, "constrained_share": 0.5,
                           "schema": SCHEMA, "order": "interleaved free/mixed"},
              "rows": rows, "pair_ratios": pairs, "ratio_mixed_vs_free": ratio,
              "within_15_percent": ratio >= 0.85}
    path = save(report, args.results_dir, "structured_w2_cpu")
    print(f"# W2-shaped: {args.requests} requests at once, {args.input_len} in / "
          f"{args.output_len} out, half json_schema-constrained vs none, on {report['device']}")
    print(table(rows, [("round", "round"), ("config", "config"), ("output tok/s", "output_tok_s"),
                       ("tokens", "output_tokens"), ("TPOT p50 ms", "tpot_p50_ms"),
                       ("TTFT p50 ms", "ttft_p50_ms"), ("failed", "failed")]))
    print(f"mixed / free output tok/s, median of the pairs: {ratio:.3f} (pairs: "
          f"{', '.join(f'{p:.3f}' for p in pairs)})")
    print(f"saved {path}")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
