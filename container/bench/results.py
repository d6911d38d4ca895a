"""Saving results (JSON under bench/results/) and naming the device they ran on."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
from pathlib import Path


def device_name() -> str:
    """The GPU's name when there is one, else the CPU model and core count."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        if out.returncode == 0 and names:
            return f"{len(names)}x {names[0]}" if len(names) > 1 else names[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    cpu = platform.processor() or "cpu"
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    import os

    return f"{cpu} ({os.cpu_count()} cores)"


def save(result: dict, results_dir: str | Path, label: str) -> Path:
    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    path = directory / f"{safe}.json"
    result.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S"))
    path.write_text(json.dumps(result, indent=2))
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows of flat dicts -> aligned text table; columns: (header, key)."""
    cells = [[h for h, _ in columns]] + [[_fmt(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def flat(level: dict) -> dict:
    out = {k: v for k, v in level.items() if not isinstance(v, dict)}
    for key, value in level.items():
        if isinstance(value, dict):
            for stat, number in value.items():
                out[f"{key}.{stat}"] = number
    return out
