"""CPU benchmark of the native engine through HTTP, next to transformers' generate.

`python -m container.bench.cpu_llm_bench --model-dir DIR` serves the model, streams random
prompts at 1, 8 and 32 concurrent users, then runs transformers' generate (fp32, greedy, static
batches of the same sizes) on the same prompts in this process. Prints output tokens/s side by
side and saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from .backends import lmi
from .metrics import summarize
from .results import device_name, save, table
from .runner import run
from .serve_process import BenchServer
from .workload import random_prompts


def transformers_generate(model_dir: str, prompts, output_len: int, batch: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None          # fixed lengths, as the server's run
    produced, elapsed = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            chunk = [p.token_ids for p in prompts[start:start + batch]]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            began = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=output_len,
                                 do_sample=False, pad_token_id=0)
            elapsed += time.perf_counter() - began
            produced += (out.shape[1] - width) * len(chunk)
    return produced / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.bench.cpu_llm_bench")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = {users: random_prompts(args.model_dir, max(4, users), args.input_len,
                                       args.output_len, seed=users) for users in levels}
    rows = []
    with BenchServer(args.model_dir) as server:
        asyncio.run(run(lmi, server.url, workloads[levels[0]][:1], concurrency=1))   # warm up
        for users in levels:
            results, duration = asyncio.run(run(lmi, server.url, workloads[users],
                                                concurrency=users))
            summary = summarize(results, duration)
            rows.append({"users": users, "ours_tok_s": summary["output_tokens_per_s"],
                         "ours_ttft_p50_ms": summary["ttft_ms"]["p50"],
                         "ours_tpot_p50_ms": summary["tpot_ms"]["p50"],
                         "failed": summary["failed"]})
    for row in rows:
        peer = transformers_generate(args.model_dir, workloads[row["users"]], args.output_len,
                                     row["users"])
        row["transformers_tok_s"] = peer
        row["ours_vs_transformers"] = row["ours_tok_s"] / peer
    report = {"label": "cpu_llm", "device": device_name(), "model_dir": args.model_dir,
              "workload": {"input_len": args.input_len, "output_len": args.output_len},
              "rows": rows}
    path = save(report, args.results_dir, "cpu_llm")
    print(f"# native engine over HTTP vs transformers generate, {args.input_len} in / "
          f"{args.output_len} out, on {report['device']}")
    print(table(rows, [("users / batch", "users"), ("ours tok/s", "ours_tok_s"),
                       ("transformers tok/s", "transformers_tok_s"),
                       ("ours / transformers", "ours_vs_transformers"),
                       ("TTFT p50 ms", "ours_ttft_p50_ms"), ("TPOT p50 ms", "ours_tpot_p50_ms"),
                       ("failed", "failed")]))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
