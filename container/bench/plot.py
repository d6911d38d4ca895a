"""PNG of throughput and latency against concurrency from one or more result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(result_files: list[Path], output: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path in result_files:
        data = json.loads(Path(path).read_text())
        levels = sorted(data["levels"], key=lambda level: level["concurrency"])
        xs = [level["concurrency"] for level in levels]
        name = data.get("label", Path(path).stem)
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
    fig.suptitle(title or "throughput and latency against concurrency")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


if __name__ == "__main__":
    print(plot([Path(p) for p in sys.argv[2:]], Path(sys.argv[1])))
