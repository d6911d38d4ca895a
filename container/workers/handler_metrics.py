"""`[METRICS]` lines a handler prints on stdout become Prometheus samples, as DJL Serving reads
them from its Python workers.

Accepted line forms (DJL's metric text, and a JSON object for handlers that prefer it):

    [METRICS]TokensPerSecond.Count/Second:123.4|#Model:llama,Device:0|timestamp:1700000000
    [METRICS]QueueDepth:7
    [METRICS]{"name": "TokensPerSecond", "value": 123.4, "unit": "Count/Second",
              "dimensions": {"Model": "llama"}}

Each becomes `serve_handler_metric{name, unit, dimensions}` (the last value) and a count in
`serve_handler_metric_lines_total{name}`. The line itself still reaches the log unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "[METRICS]"
_TEXT_FORM = re.compile(r"^(?P<name>[A-Za-z_][\w\-/]*?)(?:\.(?P<unit>[^:|]+))?:(?P<value>[^|]+)"
                        r"(?:\|#(?P<dims>[^|]*))?(?:\|.*)?$")
MAX_NAME = 200


@dataclass(frozen=True)
class HandlerMetric:
    name: str
    value: float
    unit: str = ""
    dimensions: str = ""      # "Key=Value,Key=Value", sorted: one label, bounded shape


def parse_metric_line(line: str) -> HandlerMetric | None:
    """The metric a `[METRICS]` line carries, or None for any other or malformed line."""
    line = line.strip()
    if not line.startswith(PREFIX):
        return None
    body = line[len(PREFIX):].strip()
    if body.startswith("{"):
        return _parse_json(body)
    match = _TEXT_FORM.match(body)
    if not match:
        return None
    value = _number(match["value"].strip())
    if value is None:
        return None
    dims = {}
    for item in (match["dims"] or "").split(","):
        key, sep, val = item.partition(":")
        if key.strip() and sep:
            dims[key.strip()] = val.strip()
    return _metric(match["name"], value, match["unit"] or "", dims)


def _parse_json(body: str) -> HandlerMetric | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    value = _number(data.get("value"))
    dims = data.get("dimensions") or {}
    if value is None or not isinstance(dims, dict):
        return None
    return _metric(data["name"], value, str(data.get("unit") or ""),
                   {str(k): str(v) for k, v in dims.items()})


def _number(raw) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _metric(name: str, value: float, unit: str, dims: dict[str, str]) -> HandlerMetric | None:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        return None
    dimensions = ",".join(f"{k}={v}" for k, v in sorted(dims.items()))
    return HandlerMetric(name, value, unit.strip()[:MAX_NAME], dimensions[:4 * MAX_NAME])


def record(metric: HandlerMetric) -> None:
    from ..metrics import metrics

    m = metrics()
    m.handler_metric.labels(metric.name, metric.unit, metric.dimensions).set(metric.value)
    m.handler_metric_lines.labels(metric.name).inc()


class MetricsTee(io.TextIOBase):
    """Wraps sys.stdout: everything passes through; complete `[METRICS]` lines are recorded."""

    def __init__(self, target):
        self.target = target
        self._partial = ""

    def write(self, text: str) -> int:
        written = self.target.write(text)
        if PREFIX in text or self._partial:
            self._scan(text)
        return written if written is not None else len(text)

    def _scan(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-8192:] if PREFIX in lines[-1] else ""
        for line in lines:
            try:
                metric = parse_metric_line(line)
                if metric is not None:
                    record(metric)
            except Exception:  # noqa: BLE001 - a metric must never break the handler's print
                log.debug("could not record a [METRICS] line", exc_info=True)

    def flush(self) -> None:
        self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    def isatty(self) -> bool:
        return self.target.isatty()

    @property
    def encoding(self):
        return getattr(self.target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def capture_handler_metrics() -> None:
    """Install the tee on this process's stdout (rank 0 of a handler worker group)."""
    if not isinstance(sys.stdout, MetricsTee):
        sys.stdout = MetricsTee(sys.stdout)
