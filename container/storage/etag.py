"""Check a downloaded file against its S3 ETag.

S3's ETag is the MD5 of the object for single-part uploads, and MD5-of-part-MD5s plus "-N" for
multipart uploads (part size read with HEAD ?partNumber=1). It is neither for SSE-KMS or SSE-C
objects; those are checked by size only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SINGLE = re.compile(r"[0-9a-f]{32}")
_MULTI = re.compile(r"([0-9a-f]{32})-(\d+)")
_READ = 8 << 20


def clean(etag: str) -> str:
    return etag.strip().strip('"').lower()


def parts_of(etag: str) -> int | None:
    """Number of upload parts an ETag says (1 for a single-part ETag), None if it is opaque."""
    etag = clean(etag)
    if _SINGLE.fullmatch(etag):
        return 1
    multi = _MULTI.fullmatch(etag)
    return int(multi.group(2)) if multi else None


def md5_etag(path: Path, parts: int, part_size: int) -> str:
    """The ETag S3 would give this file uploaded in `parts` parts of `part_size` bytes."""
    if parts == 1:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(_READ):
                digest.update(chunk)
        return digest.hexdigest()
    digests = []
    with open(path, "rb") as f:
        for _ in range(parts):
            digest, left = hashlib.md5(), part_size
            while left and (chunk := f.read(min(_READ, left))):
                digest.update(chunk)
                left -= len(chunk)
            digests.append(digest.digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{parts}"


def matches(path: Path, etag: str, part_size: int | None) -> bool:
    parts = parts_of(etag)
    if parts is None:
        return True          # opaque ETag: nothing to compare with
    return md5_etag(path, parts, part_size or path.stat().st_size) == clean(etag)
