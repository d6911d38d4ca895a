"""`GET /metrics`: Prometheus text, merged from every process, plus live worker figures.

Counters and histograms come from the multiprocess files (container/metrics.py). Gauges that
describe the worker right now (running and waiting requests, KV blocks, requests in flight) and
the supervisor's figures (restarts, load time, state) are read when Prometheus scrapes, so a
dead process never leaves a stale gauge behind.
"""

from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..metrics import multiprocess_enabled

# engine stats key -> (metric name, help, kind)
ENGINE_FIGURES = {
    "running": ("serve_running_requests", "Sequences in the running batch", "gauge"),
    "waiting": ("serve_waiting_requests", "Sequences waiting to be scheduled", "gauge"),
    "kv_blocks_used": ("serve_kv_cache_blocks_used", "KV-cache blocks holding tokens", "gauge"),
    "kv_blocks_total": ("serve_kv_cache_blocks_total", "KV-cache blocks in the pool", "gauge"),
    "requests_in_flight": ("serve_worker_requests_in_flight",
                           "Requests the worker accepted and has not answered", "gauge"),
    "preemptions": ("serve_preemptions", "Sequences preempted (recomputed later)", "counter"),
    "steps": ("serve_engine_steps", "Engine steps run", "counter"),
    "prompt_tokens_computed": ("serve_prompt_tokens_computed",
                               "Prompt tokens run through the model (prefix-cache hits excluded)",
                               "counter"),
    "cached_prompt_tokens": ("serve_prefix_cache_hit_tokens",
                             "Prompt tokens served from the prefix cache", "counter"),
    # speculative decoding (option.speculative_config)
    "spec_draft_tokens": ("serve_spec_draft_tokens",
                          "Draft tokens proposed and verified", "counter"),
    "spec_accepted_tokens": ("serve_spec_accepted_tokens",
                             "Draft tokens the target model accepted", "counter"),
    "spec_verify_steps": ("serve_spec_verified_sequence_steps",
                          "Sequence-steps that verified draft tokens", "counter"),
    "spec_acceptance_rate": ("serve_spec_acceptance_rate",
                             "Accepted / proposed draft tokens since start", "gauge"),
    "spec_tokens_per_step": ("serve_spec_tokens_per_step",
                             "Tokens emitted per sequence-step that verified drafts (1 + "
                             "accepted, since start)", "gauge"),
}


class WorkerCollector:
    """Scrape-time figures from status.json and the worker's stats reply."""

    def __init__(self, client_factory):
        self.client_factory = client_factory

    def collect(self):
        client = self.client_factory()
        status = client.status.get()
        up = GaugeMetricFamily("serve_worker_ready", "1 when the model answers requests")
        up.add_metric([], 1.0 if status.ready else 0.0)
        yield up
        restarts = CounterMetricFamily("serve_worker_restarts",
                                       "Times the worker group was restarted after a failure")
        restarts.add_metric([], float(status.restarts))
        yield restarts
        load = GaugeMetricFamily("serve_model_load_seconds",
                                 "Seconds the last (re)load of the worker group took")
        load.add_metric([], float(status.load_seconds))
        yield load
        stats = client.stats(timeout=1.0) if status.ready else {}
        for key, (name, documentation, kind) in ENGINE_FIGURES.items():
            if key not in stats:
                continue
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                name, documentation)
            family.add_metric([], stats[key])
            yield family


def build_registries(client_factory) -> list[CollectorRegistry]:
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
    else:                     # one process (tests that build the app directly)
        from prometheus_client import REGISTRY as merged
    live = CollectorRegistry()
    live.register(WorkerCollector(client_factory))
    return [merged, live]


def register_metrics_route(app: Flask, client_factory) -> None:
    registries = build_registries(client_factory)

    @app.get("/metrics")
    def prometheus_metrics():
        body = b"".join(generate_latest(registry) for registry in registries)
        response = Response(body, status=200)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
