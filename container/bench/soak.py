"""Soak run: mixed good and bad traffic against a real `serve` while its worker is SIGKILLed
every minute. Outside `make test`; its figures go in the README.

    python -m container.bench.soak [--model-dir DIR] [--minutes 10] [--users 6] [--kill-every 60]

Every request ends in exactly one bucket:
  correct       200 whose greedy tokens equal transformers' generate on the same prompt
  wrong         200 with other tokens (corruption)                                  must be 0
  refused       a clear error while the worker restarts (503 WorkerDied / QueueFull /
                ServiceUnavailable, or a stream whose last line names that error)
  rejected      a bad request answered 4xx with a JSON error
  server_error  a 500, or a 4xx/5xx without a JSON error body                      must be 0
  lost          a 200 that ended without its last line and without an error line,
                or a connection closed with no answer                            must be 0
  hung          no answer within --timeout seconds                                 must be 0
Saves bench/results/soak.json (or --output) and exits non-zero if a must-be-0 bucket is not.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import requests

from .results import device_name
from .serve_process import BenchServer

DEFAULT_MODEL = Path.home() / ".cache" / "serve" / "models" / "SmolLM2-135M-Instruct"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,",
           "The three primary colours are", "To make tea, first", "SELECT name FROM",
           "Water boils at", "The quick brown fox"]
NEW_TOKENS = 12
RESTART_ERRORS = {"WorkerDied", "QueueFull", "ServiceUnavailable", "WorkerRestarted"}


def oracle(model_dir: Path, tokenizer) -> dict[str, list[int]]:
    """transformers' greedy continuation of each prompt: the reference for every answer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    expected = {}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=0)
            expected[prompt] = out[0, ids.shape[1]:].tolist()
    return expected


def bad_requests() -> list[tuple[str, dict]]:
    """(name, requests.post kwargs) of inputs a server must refuse with a clear 4xx."""
    json_header = {"Content-Type": "application/json"}
    return [
        ("malformed_json", {"data": b'{"inputs": "x", ', "headers": json_header}),
        ("negative_temperature", {"json": {"inputs": "x", "parameters": {
            "do_sample": True, "temperature": -1}}}),
        ("huge_max_new_tokens", {"json": {"inputs": "x", "parameters": {
            "max_new_tokens": 10**12}}}),
        ("nan_top_p", {"data": b'{"inputs": "x", "parameters": {"top_p": NaN}}',
                       "headers": json_header}),
        ("wrong_type", {"json": {"inputs": 42}}),
        ("empty_body", {"data": b"", "headers": json_header}),
        ("invalid_utf8", {"data": b'{"inputs": "\xff\xfe"}', "headers": json_header}),
        ("million_char_prompt", {"json": {"inputs": "a " * 500_000}}),
        ("deep_nesting", {"data": b"[" * 50_000 + b"]" * 50_000, "headers": json_header}),
        ("text_plain", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}),
    ]


class Soak:
    def __init__(self, server: BenchServer, expected: dict[str, list[int]], timeout: float):
        self.server = server
        self.expected = expected
        self.timeout = timeout
        self.counts: collections.Counter = collections.Counter()
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.kills: list[float] = []
        self.local = threading.local()

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        self.local.last = outcome
        with self.lock:
            self.counts[outcome] += 1
            self.by_kind[kind][outcome] += 1
            if detail and outcome not in ("correct", "rejected", "refused") and len(
                    self.examples[outcome]) < 10:
                self.examples[outcome].append(f"{kind}: {detail[:300]}")

    # traffic ---------------------------------------------------------------------------------
    def user(self, seed: int) -> None:
        rng = random.Random(seed)
        bad = bad_requests()
        while not self.stop.is_set():
            roll = rng.random()
            try:
                if roll < 0.45:
                    self.good(rng.choice(PROMPTS), stream=False)
                elif roll < 0.75:
                    self.good(rng.choice(PROMPTS), stream=True)
                else:
                    self.bad(*rng.choice(bad))
            except requests.Timeout as exc:
                self.record("any", "hung", str(exc))
            except requests.ConnectionError as exc:
                self.record("any", "lost", f"connection: {exc}")
            if getattr(self.local, "last", "") == "refused":
                time.sleep(1.0)          # as a client honouring Retry-After would
            elif rng.random() < 0.3:
                time.sleep(rng.random() * 0.2)

    def _error_outcome(self, kind: str, response) -> None:
        try:
            body = response.json()
            typed = isinstance(body, dict) and "type" in body and "message" in body
        except ValueError:
            body, typed = None, False
        if not typed or response.status_code >= 500 and response.status_code not in (503, 504):
            self.record(kind, "server_error", f"{response.status_code} {response.text[:200]}")
        elif response.status_code == 503 and body["type"] in RESTART_ERRORS:
            self.record(kind, "refused")
        elif 400 <= response.status_code < 500:
            self.record(kind, "rejected")
        else:
            self.record(kind, "server_error", f"{response.status_code} {body}")

    def good(self, prompt: str, stream: bool) -> None:
        kind = "stream" if stream else "generate"
        body = {"inputs": prompt, "stream": stream, "parameters": {
            "max_new_tokens": NEW_TOKENS, "ignore_eos": True, "details": True}}
        url = self.server.url + "/invocations"
        with requests.post(url, json=body, stream=stream, timeout=self.timeout) as response:
            if response.status_code != 200:
                self._error_outcome(kind, response)
                return
            if not stream:
                tokens = [t["id"] for t in response.json()["details"]["tokens"]]
                self._check(kind, prompt, tokens)
                return
            lines = [json.loads(line) for line in response.iter_lines() if line]
        if not lines:
            self.record(kind, "lost", "empty stream")
            return
        last = lines[-1]
        if "error" in last:
            outcome = "refused" if last.get("type") in RESTART_ERRORS else "server_error"
            self.record(kind, outcome, json.dumps(last))
            return
        if "generated_text" not in last:
            self.record(kind, "lost", f"stream ended after {len(lines)} lines without its end")
            return
        self._check(kind, prompt, [line["token"]["id"] for line in lines])

    def _check(self, kind: str, prompt: str, tokens: list[int]) -> None:
        if tokens == self.expected[prompt]:
            self.record(kind, "correct")
        else:
            self.record(kind, "wrong", f"{prompt!r}: {tokens} != {self.expected[prompt]}")

    def bad(self, name: str, kwargs: dict) -> None:
        response = requests.post(self.server.url + "/invocations", timeout=self.timeout, **kwargs)
        if response.status_code == 200:
            self.record(f"bad:{name}", "server_error", "a bad request was answered 200")
        else:
            self._error_outcome(f"bad:{name}", response)

    # faults ----------------------------------------------------------------------------------
    def killer(self, every: float) -> None:
        while not self.stop.wait(every):
            try:
                name = requests.get(self.server.url + "/models", timeout=5).json()[
                    "models"][0]["modelName"]
                pid = requests.get(self.server.url + f"/models/{name}", timeout=5).json()[0][
                    "workers"][0]["pid"]
                os.kill(int(pid), signal.SIGKILL)
                self.kills.append(time.time())
                print(f"[{time.strftime('%H:%M:%S')}] killed worker {pid}; "
                      f"so far {dict(self.counts)}", flush=True)
            except (requests.RequestException, KeyError, IndexError, TypeError, ValueError,
                    ProcessLookupError) as exc:
                print(f"kill skipped: {exc}", flush=True)


def tree_rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--output", default="bench/results/soak.json")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model_dir = Path(args.model_dir)
    expected = oracle(model_dir, AutoTokenizer.from_pretrained(model_dir))
    server = BenchServer(str(model_dir), env={"SERVING_LOG_LEVEL": "warning"})
    server.wait()
    rss_start = tree_rss_mib(server.process.pid)
    soak = Soak(server, expected, args.timeout)
    threads = [threading.Thread(target=soak.user, args=(seed,), daemon=True)
               for seed in range(args.users)]
    threads.append(threading.Thread(target=soak.killer, args=(args.kill_every,), daemon=True))
    started = time.time()
    for thread in threads:
        thread.start()
    time.sleep(args.minutes * 60)
    soak.stop.set()
    for thread in threads:
        thread.join(timeout=args.timeout + 10)
    hung_threads = sum(thread.is_alive() for thread in threads)
    # the server must be healthy again by itself, and answer right
    deadline = time.time() + 120
    healthy = False
    while time.time() < deadline and not healthy:
        try:
            healthy = requests.get(server.url + "/ping", timeout=2).status_code == 200
        except requests.RequestException:
            pass
        time.sleep(0.5)
    soak.stop.clear()
    soak.good(PROMPTS[0], stream=False)
    rss_end = tree_rss_mib(server.process.pid)
    metrics_text = requests.get(server.url + "/metrics", timeout=10).text
    server.stop()

    counts = dict(soak.counts)
    must_be_zero = {k: counts.get(k, 0) for k in ("wrong", "server_error", "lost", "hung")}
    must_be_zero["hung_threads"] = hung_threads
    result = {
        "device": device_name(), "model": model_dir.name, "minutes": args.minutes,
        "users": args.users, "kill_every_s": args.kill_every, "kills": len(soak.kills),
        "requests": sum(counts.values()), "outcomes": counts,
        "by_kind": {k: dict(v) for k, v in soak.by_kind.items()},
        "must_be_zero": must_be_zero, "healthy_after": healthy,
        "rss_mib": {"start": round(rss_start), "end": round(rss_end)},
        "restarts_metric": [line for line in metrics_text.splitlines()
                            if line.startswith("serve_worker_restarts_total")],
        "examples": dict(soak.examples), "started": started,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("requests", "kills", "outcomes", "must_be_zero",
                                             "healthy_after", "rss_mib")}, indent=2))
    ok = healthy and not any(must_be_zero.values())
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
