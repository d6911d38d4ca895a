"""option.model_id=s3://...: fetch a checkpoint (a prefix, or a model.tar.gz) once per host.

Files land in SERVING_DOWNLOAD_DIR/s3/<bucket>/<key>. Each object is fetched as many parallel
ranged GETs (s3_transfer.py: s5cmd or s3transfer) into a `.serve-partial` file, checked against
its size and ETag, then renamed: a name without the suffix is always a whole, verified file. A manifest of (ETag, size) per file lets the next start, or the next rank, reuse
what is complete; an interrupted download resumes file by file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from ..errors import StartupError
from . import etag, s3_transfer
from .host_lock import download_root, once_per_host, read_json, write_json_atomic
from .progress import TransferProgress
from .s3_client import (PERMANENT_CODES, S3Url, describe_code, describe_failure, make_client,
                        parse_s3_url)
from .selection import select_files

log = logging.getLogger(__name__)

MANIFEST = ".serve-manifest.json"
PARTIAL = ".serve-partial"
CHECK_ROUNDS = 2            # a file that fails its size/ETag check is fetched once more


@dataclass(frozen=True)
class RemoteObject:
    key: str
    relpath: str
    size: int
    etag: str

    def record(self) -> dict:
        return {"etag": self.etag, "size": self.size}


def fetch_model(url: str, config) -> Path:
    """The local directory of the checkpoint at `url` (resolve.py's entry point)."""
    stream = (config.option("load_format") or "auto") == "stream"
    return fetch_s3(url, stream=stream)


def fetch_s3(url: str, stream: bool = False, root: Path | None = None) -> Path:
    """Download `url` (all but the safetensors when `stream`) unless it is already here."""
    location = parse_s3_url(url)
    dest = local_dir(root or download_root(), location)
    client = make_client(s3_transfer.CONCURRENCY)
    try:
        with once_per_host(dest, url):
            if location.is_archive:
                if stream:
                    raise StartupError(
                        f"option.model_id={url}: option.load_format=stream reads safetensors "
                        "under an S3 prefix, not a tarball: upload the checkpoint uncompressed or "
                        "remove option.load_format")
                return _fetch_archive(client, location, dest)
            return _fetch_prefix(client, location, dest, stream)
    except (ClientError, BotoCoreError) as exc:
        raise describe_failure(url, exc) from None


def local_dir(root: Path, location: S3Url) -> Path:
    parts = [p for p in location.key.split("/") if p not in ("", ".", "..")]
    if location.is_archive:
        parts[-1] += ".extracted"
    return root.joinpath("s3", location.bucket, *parts)


def list_objects(client, location: S3Url, prefix: str) -> list[RemoteObject]:
    objects = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relpath = item["Key"][len(prefix):]
            if not relpath or relpath.endswith("/"):
                continue                      # the console's "folder" markers
            if ".." in PurePosixPath(relpath).parts or relpath.startswith("/"):
                log.warning("skipping s3://%s/%s: its name leaves the download directory",
                            location.bucket, item["Key"])
                continue
            objects.append(RemoteObject(item["Key"], relpath, int(item["Size"]),
                                        etag.clean(item.get("ETag", ""))))
    return objects


# -- a prefix holding a Hugging Face checkpoint ---------------------------------------------------

def _fetch_prefix(client, location: S3Url, dest: Path, stream: bool) -> Path:
    objects = list_objects(client, location, location.prefix)
    if not objects:
        raise StartupError(
            f"option.model_id={location}: no objects under s3://{location.bucket}/"
            f"{location.prefix}: check the prefix (it should hold config.json and *.safetensors)")
    wanted = set(select_files([o.relpath for o in objects], stream))
    objects = [o for o in objects if o.relpath in wanted]
    dest.mkdir(parents=True, exist_ok=True)
    remove_partials(dest)
    manifest = read_json(dest / MANIFEST, {})
    todo = [o for o in objects if not _is_complete(dest, o, manifest)]
    if len(todo) < len(objects):
        log.info("%s: %d of %d files already complete in %s", location,
                 len(objects) - len(todo), len(objects), dest)

    def keep(obj: RemoteObject, partial: Path) -> None:
        os.replace(partial, dest / obj.relpath)
        manifest[obj.relpath] = obj.record()
        write_json_atomic(dest / MANIFEST, manifest)

    if todo:
        download(client, location.bucket, [(o, _partial(dest / o.relpath)) for o in todo],
                 str(location), keep)
    return dest


def _is_complete(dest: Path, obj: RemoteObject, manifest: dict) -> bool:
    path = dest / obj.relpath
    return (path.is_file() and path.stat().st_size == obj.size
            and manifest.get(obj.relpath) == obj.record())


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


def remove_partials(directory: Path) -> None:
    """Leftovers of an interrupted download (ours, and s3transfer's temp names beside them)."""
    for leftover in directory.rglob(f"*{PARTIAL}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# -- a model.tar.gz -------------------------------------------------------------------------------

def _fetch_archive(client, location: S3Url, dest: Path) -> Path:
    archive = _archive_object(client, location)
    marker = read_json(dest / MANIFEST, {})
    if dest.is_dir() and marker.get("archive") == archive.record():
        log.info("%s: already extracted in %s", location, dest)
        return model_root(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tarball = dest.parent / (dest.name + ".tar.gz" + PARTIAL)
    staging = dest.parent / (dest.name + PARTIAL)
    for leftover in dest.parent.glob(dest.name + "*" + PARTIAL + "*"):   # ours only
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    # checked, but left under its partial name: only the extracted folder is ever "complete"
    download(client, location.bucket, [(archive, tarball)], str(location), lambda *_: None)
    log.info("%s: extracting into %s", location, dest)
    try:
        with tarfile.open(tarball, "r:*") as tar:
            tar.extractall(staging, filter="data")    # no absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StartupError(f"option.model_id={location}: cannot extract the archive ({exc}): "
                           "upload a .tar.gz made with `tar czf model.tar.gz -C DIR .`") from None
    finally:
        tarball.unlink(missing_ok=True)
    write_json_atomic(staging / MANIFEST, {"archive": archive.record()})
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return model_root(dest)


def _archive_object(client, location: S3Url) -> RemoteObject:
    # a listing, not a HEAD: it tells a missing bucket (NoSuchBucket) from a missing key
    listed = client.list_objects_v2(Bucket=location.bucket, Prefix=location.key, MaxKeys=5)
    for item in listed.get("Contents", []):
        if item["Key"] == location.key:
            return RemoteObject(item["Key"], PurePosixPath(item["Key"]).name, int(item["Size"]),
                                etag.clean(item.get("ETag", "")))
    raise StartupError(f"option.model_id={location}: no such object: check the key")


def model_root(directory: Path) -> Path:
    """Tarballs often wrap the checkpoint in one top-level folder: step into it."""
    if (directory / "config.json").is_file():
        return directory
    entries = [p for p in directory.iterdir() if p.name != MANIFEST]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return directory


# -- the transfer ---------------------------------------------------------------------------------

def download(client, bucket: str, jobs: list[tuple[RemoteObject, Path]], what: str,
             keep: Callable[[RemoteObject, Path], None]) -> None:
    """Fetch each object into its path, check it, and hand it to `keep` as soon as it is good
    (so an interruption loses only the files in flight); a file that fails its check is fetched
    again (CHECK_ROUNDS in all)."""
    for _ in range(CHECK_ROUNDS):
        failed = _fetch_round(client, bucket, jobs, what, keep)
        if not failed:
            return
        jobs = [(obj, path) for obj, path, _ in failed]
    obj, _, problem = failed[0]
    raise StartupError(f"option.model_id={what}: s3://{bucket}/{obj.key} {problem} after "
                       f"{CHECK_ROUNDS} downloads: the object may be changing or corrupted in "
                       "transit; re-upload it or retry")


def _fetch_round(client, bucket, jobs, what, keep) -> list[tuple[RemoteObject, Path, str]]:
    progress = TransferProgress(f"downloading {what}", sum(o.size for o, _ in jobs))
    failed: list[tuple[RemoteObject, Path, str]] = []
    checks: dict = {}

    def again(obj: RemoteObject, path: Path, problem: str) -> None:
        log.warning("s3://%s/%s %s; fetching it again", bucket, obj.key, problem)
        path.unlink(missing_ok=True)
        failed.append((obj, path, problem))

    def settle(done) -> None:
        for check in done:
            obj, path = checks.pop(check)
            problem = check.result()
            again(obj, path, problem) if problem else keep(obj, path)

    for _, path in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
    # files are checked (hashed) on two threads while the others are still downloading
    with ThreadPoolExecutor(2) as checker:
        for job, error in s3_transfer.fetch(client, bucket, jobs, progress):
            if job is not None and error is None:
                checks[checker.submit(_check, client, bucket, *job)] = job
            elif job is not None:
                again(*job, _transient(what, error))
            settle([c for c in list(checks) if c.done()])
        settle(list(as_completed(list(checks))))
    progress.close()
    return failed


def _transient(what: str, error: Exception) -> str:
    """What went wrong with a file worth fetching again; raises for failures that would only
    repeat (access denied, missing key ...)."""
    if isinstance(error, FlexibleChecksumError):        # S3's own checksum of the object
        return f"does not match its checksum ({error})"
    if isinstance(error, s3_transfer.TransferFailed):
        if error.code in PERMANENT_CODES:
            raise describe_code(what, error.code, str(error))
        return f"failed ({error})"
    raise error


def _check(client, bucket: str, obj: RemoteObject, path: Path) -> str | None:
    """None if the file is the object; else what is wrong."""
    size = path.stat().st_size if path.is_file() else -1
    if size != obj.size:
        return f"has {size} bytes instead of {obj.size}"
    parts = etag.parts_of(obj.etag)
    if parts is None:
        return None
    head = client.head_object(Bucket=bucket, Key=obj.key,
                              **({"PartNumber": 1} if parts > 1 else {}))
    if head.get("SSECustomerAlgorithm") or "kms" in str(head.get("ServerSideEncryption", "")):
        return None          # the ETag of an SSE-KMS / SSE-C object is not an MD5
    part_size = int(head["ContentLength"]) if parts > 1 else obj.size
    if not etag.matches(path, obj.etag, part_size):
        return "does not match its ETag (MD5)"
    return None
