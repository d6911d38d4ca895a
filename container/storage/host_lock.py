"""Where remote checkpoints land on this host, and the lock that makes one process fetch them.

Every rank of a worker group resolves option.model_id at start-up. The first to take the lock of
a download target fetches it; the others block on the same lock, then find the files complete and
fetch nothing. The lock is an OS file lock (filelock), so a rank that dies mid-download releases
it and the next rank picks the download up where the files on disk say it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

WAIT_LOG_S = 30.0     # how often a waiting rank says it is still waiting


def download_root() -> Path:
    """SERVING_DOWNLOAD_DIR, else ~/.cache/serve/downloads."""
    configured = os.environ.get("SERVING_DOWNLOAD_DIR")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache/serve/downloads"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def once_per_host(target: Path, what: str) -> Iterator[None]:
    """Hold the host-wide lock of one download target while fetching it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    waited = 0.0
    while True:
        try:
            lock.acquire(timeout=WAIT_LOG_S if waited else 0.5)
            break
        except Timeout:
            if not waited:
                log.info("another process on this host is fetching %s: waiting for it", what)
            waited += WAIT_LOG_S
    try:
        yield
    finally:
        lock.release()


def write_json_atomic(path: Path, data) -> None:
    """Readers see the old file or the new one, never half of one."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
