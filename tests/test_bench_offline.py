"""The offline benchmark (python -m container.bench.offline) on a tiny model: every engine runs
the workload --repeats times on fresh prompts, the median run is reported with all runs, and
each ratio is ours over that engine's."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from tiny_models import build_model


def test_offline_benchmark_reports_the_median_of_repeated_runs(tmp_path):
    model = build_model(tmp_path / "model", "llama")
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "container.bench.offline", "--model-dir", str(model),
         "--num-prompts", "6", "--input-len", "8", "--output-len", "5", "--peers", "generate",
         "--peer-batch", "3", "--repeats", "3", "--label", "tiny", "--results-dir",
         str(results)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((results / "tiny.json").read_text())
    assert report["repeats"] == 3
    ours, peer = report["results"]
    assert peer["name"] == "transformers generate (batch 3)"
    for row in (ours, peer):
        assert row["output_tokens"] == 6 * 5
        assert len(row["runs_tok_s"]) == 3
        assert round(row["output_tokens_per_s"], 1) == statistics.median(row["runs_tok_s"])
    assert abs(peer["ours_vs_this"] - ours["output_tokens_per_s"] / peer["output_tokens_per_s"]) \
        < 1e-9
    assert "tiny on" in done.stdout and "saved" in done.stdout
