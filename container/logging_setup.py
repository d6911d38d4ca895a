"""One log format for serve, the front end and every rank, so interleaved lines stay readable."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info", process: str = "serve") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{process}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
