"""Prometheus metrics shared by the front end and the workers.

serve runs several processes (gunicorn workers, the worker group's rank 0), so the counters and
histograms use prometheus_client's multiprocess mode: each process writes its own files under
PROMETHEUS_MULTIPROC_DIR (inside the run directory, set by serve before anything starts) and
`GET /metrics` merges them. Live figures (running and waiting requests, KV blocks, restarts)
are read at scrape time instead; see container/frontend/metrics_route.py.
"""

from __future__ import annotations

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. TTFT and end-to-end reach minutes for long generations; ITL is milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                     2.5)


def prepare_multiprocess_dir(run_dir: Path) -> Path:
    """Called by serve before it starts any process: every child inherits the variable."""
    path = Path(run_dir) / "prometheus"
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _histogram(name: str, documentation: str, labels=(), buckets=LATENCY_BUCKETS):
    from prometheus_client import Histogram

    return Histogram(name, documentation, labels, buckets=buckets)


def _counter(name: str, documentation: str, labels=()):
    from prometheus_client import Counter

    return Counter(name, documentation, labels)


class _Metrics:
    """Created on first use, after the process knows PROMETHEUS_MULTIPROC_DIR."""

    def __init__(self):
        self.requests = _counter("serve_requests", "HTTP requests answered, by route and status",
                                 ("route", "method", "status"))
        self.request_seconds = _histogram(
            "serve_request_duration_seconds",
            "HTTP request duration until the last byte was sent (streams included)", ("route",))
        self.queue_seconds = _histogram(
            "serve_request_queue_seconds",
            "Time from arrival until the worker took the request (handler: its batch started; "
            "LLM: it joined the rolling batch's scheduler)", ("kind",))
        self.ttft_seconds = _histogram("serve_time_to_first_token_seconds",
                                       "Time to the first generated token")
        self.itl_seconds = _histogram("serve_inter_token_latency_seconds",
                                      "Time between consecutive generated tokens",
                                      buckets=TOKEN_GAP_BUCKETS)
        self.e2e_seconds = _histogram("serve_e2e_request_latency_seconds",
                                      "Generation requests: arrival to the last token")
        self.prompt_tokens = _counter("serve_prompt_tokens", "Prompt tokens of finished requests")
        self.generation_tokens = _counter("serve_generation_tokens",
                                          "Tokens generated, including those of requests the "
                                          "client left")
        self.finished = _counter("serve_generation_requests",
                                 "Generation requests that ended, by finish reason",
                                 ("finish_reason",))
        self.handler_metric_lines = _counter(
            "serve_handler_metric_lines", "[METRICS] lines a handler printed, by metric name",
            ("name",))
        from prometheus_client import Gauge

        # LoRA adapters of the native engine (written by its rank 0)
        self.lora_requests = _counter("serve_lora_requests",
                                      "Generation requests by LoRA adapter (base: none)",
                                      ("adapter",))
        self.lora_tokens = _counter("serve_lora_tokens",
                                    "Tokens by LoRA adapter: prompt or generated",
                                    ("adapter", "kind"))
        self.lora_resident = Gauge("serve_lora_adapters_resident",
                                   "LoRA adapters held on the device (slots) or in host memory",
                                   ("where",), multiprocess_mode="mostrecent")
        self.lora_load_seconds = _histogram(
            "serve_lora_adapter_load_seconds",
            "Time to load a LoRA adapter: from its folder to host memory, or host to device",
            ("adapter", "stage"))
        self.handler_metric = Gauge(
            "serve_handler_metric", "The last value of each [METRICS] line a handler printed",
            ("name", "unit", "dimensions"), multiprocess_mode="mostrecent")


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics
