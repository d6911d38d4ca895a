"""A small load generator for an endpoint: N concurrent streaming clients, then the numbers.

    python sagemaker_examples/bench_endpoint.py --endpoint NAME [--endpoint-url URL] \
        --concurrency 8 --requests 64 --max-new-tokens 128

Each request is an InvokeEndpointWithResponseStream with LMI's body and ignore_eos, so every
request generates exactly max_new_tokens. Measured as `vllm bench serve` defines them:
TTFT = time to the first streamed token, E2E = time to the last byte, TPOT = (E2E - TTFT) /
(tokens - 1); throughput = all generated tokens / wall time of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_text import lines  # noqa: E402


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    tokens: int = 0
    error: str = ""


@dataclass
class Report:
    concurrency: int
    requests: int
    failures: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_ms: dict
    e2e_ms: dict
    tpot_ms: dict

    def table_row(self) -> str:
        return (f"{self.concurrency:>4} {self.requests:>5} {self.failures:>4} "
                f"{self.output_tokens_per_s:>9.1f} {self.requests_per_s:>7.2f} "
                f"{self.ttft_ms['p50']:>8.0f} {self.ttft_ms['p99']:>8.0f} "
                f"{self.e2e_ms['p50']:>8.0f} {self.e2e_ms['p99']:>8.0f} {self.tpot_ms['p50']:>7.1f}")


TABLE_HEADER = ("conc  reqs fail   tok/s   req/s  TTFTp50  TTFTp99   E2Ep50   E2Ep99 TPOTp50"
                "\n" + " " * 47 + "(ms)")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "mean": sum(ms) / len(ms) if ms else 0.0}


def one_request(runtime, endpoint: str, body: bytes) -> RequestResult:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        response = runtime.invoke_endpoint_with_response_stream(
            EndpointName=endpoint, Body=body, ContentType="application/json")
        for line in lines(response["Body"]):
            if "token" in line:
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    except Exception as exc:       # a failed request is counted, not fatal to the run
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    return RequestResult(tokens > 0, ttft or 0.0, time.perf_counter() - started, tokens,
                         "" if tokens else "no tokens streamed")


def run(runtime, endpoint: str, concurrency: int, requests: int, prompt: str,
        max_new_tokens: int) -> Report:
    body = json.dumps({"inputs": prompt, "stream": True, "parameters": {
        "max_new_tokens": max_new_tokens, "ignore_eos": True}}).encode()
    results: list[RequestResult] = []
    lock = threading.Lock()

    def worker(_index: int) -> None:
        result = one_request(runtime, endpoint, body)
        with lock:
            results.append(result)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(requests)))
    duration = time.perf_counter() - started
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    return Report(
        concurrency=concurrency, requests=requests, failures=len(results) - len(ok),
        duration_s=duration, output_tokens=tokens, output_tokens_per_s=tokens / duration,
        requests_per_s=len(ok) / duration, ttft_ms=summary_ms([r.ttft_s for r in ok]),
        e2e_ms=summary_ms([r.e2e_s for r in ok]),
        tpot_ms=summary_ms([(r.e2e_s - r.ttft_s) / (r.tokens - 1) for r in ok if r.tokens > 1]))


def runtime_client(endpoint_url: str | None, concurrency: int, region: str | None = None):
    """One client for all threads (boto3 clients are thread-safe), a connection per thread."""
    config = Config(max_pool_connections=max(10, concurrency), read_timeout=300,
                    retries={"max_attempts": 1})
    kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    if endpoint_url and "amazonaws.com" not in endpoint_url:
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("sagemaker-runtime", region_name=region or "us-east-1", config=config,
                        **kwargs)


def main(argv: list[str] | None = None) -> list[Report]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--endpoint-url", help="a local endpoint, e.g. http://127.0.0.1:8080")
    parser.add_argument("--region")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    parser.add_argument("--json", action="store_true", help="one JSON report per line")
    args = parser.parse_args(argv)
    reports = []
    if not args.json:
        print(TABLE_HEADER)
    for concurrency in args.concurrency:
        runtime = runtime_client(args.endpoint_url, concurrency, args.region)
        report = run(runtime, args.endpoint, concurrency, args.requests, args.prompt,
                     args.max_new_tokens)
        reports.append(report)
        print(json.dumps(asdict(report)) if args.json else report.table_row(), flush=True)
    return reports


if __name__ == "__main__":
    main()
