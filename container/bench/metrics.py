"""Per-request timings and their summary, defined as `vllm bench serve` defines them.

TTFT: send to first streamed chunk with text. ITL: gaps between consecutive chunks.
TPOT: (E2E - TTFT) / (output tokens - 1). Per-user tok/s: (output tokens - 1) / (E2E - TTFT),
the decode speed one user sees (1 / TPOT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def _percentiles(values, unit: float = 1000.0) -> dict:
    if not len(values):
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    array = np.asarray(values, dtype=float) * unit
    return {"mean": float(array.mean()), "p50": float(np.percentile(array, 50)),
            "p90": float(np.percentile(array, 90)), "p99": float(np.percentile(array, 99))}


def summarize(results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    tpots = [r.tpot for r in done if r.tpot is not None]
    per_user = [1.0 / t for t in tpots if t > 0]
    return {
        "requests": len(results),
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "prompt_tokens": sum(r.prompt_tokens for r in done),
        "output_tokens": output,
        "requests_per_s": len(done) / duration if duration else 0.0,
        "output_tokens_per_s": output / duration if duration else 0.0,
        "ttft_ms": _percentiles([r.ttft for r in done]),
        "itl_ms": _percentiles([gap for r in done for gap in r.itls]),
        "tpot_ms": _percentiles(tpots),
        "e2e_ms": _percentiles([r.e2e for r in done]),
        "per_user_tokens_per_s": _percentiles(per_user, unit=1.0),
    }
