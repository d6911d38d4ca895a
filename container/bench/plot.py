"""PNG of throughput and latency against concurrency from one or more result files.

    python -m container.bench.plot OUT.png FILE [FILE ...]
    python -m container.bench.plot OUT.png "native=W1.json+W3.json+W2.json" "deepspeed=..."

A `name=a.json+b.json` argument merges the levels of several runs into one series (e.g. the
workloads W1, W3 and W2 at 1, 100 and 500 users).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_series(argument: str) -> tuple[str, list[dict], str]:
    """(name, levels, device) from "file.json" or "name=a.json+b.json"."""
    name, sep, files = argument.partition("=")
    paths = [Path(p) for p in (files if sep else argument).split("+")]
    levels, device = [], ""
    for path in paths:
        data = json.loads(path.read_text())
        levels += data["levels"]
        device = device or data.get("device", "")
        if not sep:
            name = data.get("label", path.stem)
    return name, sorted(levels, key=lambda level: level["concurrency"]), device


def plot(result_files: list, output: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    devices = set()
    for argument in result_files:
        name, levels, device = load_series(str(argument))
        devices.add(device)
        xs = [level["concurrency"] for level in levels]
        left.plot(xs, [level["output_tokens_per_s"] for level in levels], marker="o", label=name)
        right.plot(xs, [level["tpot_ms"]["p50"] or 0 for level in levels], marker="o",
                   label=f"{name} TPOT p50")
        right.plot(xs, [level["ttft_ms"]["p99"] or 0 for level in levels], marker="x",
                   linestyle="--", label=f"{name} TTFT p99")
    left.set(xlabel="concurrent users", ylabel="output tokens/s", xscale="log")
    right.set(xlabel="concurrent users", ylabel="milliseconds", xscale="log", yscale="log")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title or "throughput and latency against concurrency (" +
                 ", ".join(sorted(d for d in devices if d)) + ")")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


if __name__ == "__main__":
    print(plot(sys.argv[2:], Path(sys.argv[1])))
