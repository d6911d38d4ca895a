"""option.load_format=stream: read safetensors straight from S3, no local copy of the weights.

A CheckpointSource (engine/weights.py) whose files behave like safetensors' safe_open handles.
Each slice the weight loader takes (`[a:b]`, `[:, a:b]`, `[:]`) becomes ranged GETs of just
its bytes: a tensor-parallel rank reads its own rows; for a column slice it reads whole rows
when the unwanted gaps are small (S3 has no strided reads), else one GET per row.

Loading overlaps downloading: the loader takes the same slice of every layer's tensor of a kind
(`layers.N.mlp.down_proj.weight`), so once it has read layer 0's, the same slices of the next
tensors are fetched in the background, up to PREFETCH_BYTES ahead. A guess that turns out wrong
only costs the wasted bytes; the loader then gets the slice it asked for.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from ..errors import StartupError
from .s3_client import MAX_ATTEMPTS, S3Url, describe_failure, make_client, parse_s3_url
from .s3 import list_objects

log = logging.getLogger(__name__)

CONCURRENCY = 16
CHUNK_BYTES = 32 << 20         # one ranged GET
MERGE_GAP_BYTES = 1 << 20      # column slices: read through gaps smaller than this
PREFETCH_BYTES = 512 << 20     # guessed slices fetched ahead of the loader
HEADER_PROBE = 1 << 16         # first GET of a file: the header length and, usually, the header

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class _ShortRead(Exception):
    pass


class RangeReader:
    """Ranged GETs of one object, pinned to its ETag, in parallel chunks, retried when the body
    breaks off (botocore itself retries 5xx, throttling and failed connections)."""

    def __init__(self, client, pool: ThreadPoolExecutor, location: S3Url, etag: str):
        self.client, self.pool, self.location, self.etag = client, pool, location, etag
        self.bytes_read = 0
        self._lock = threading.Lock()

    def read_into(self, buffer: memoryview, start: int) -> list[Future]:
        """Start filling `buffer` with the bytes from `start` on; one future per chunk."""
        return [self.pool.submit(self._get, buffer[o:o + CHUNK_BYTES], start + o)
                for o in range(0, len(buffer), CHUNK_BYTES)]

    def read(self, start: int, end: int) -> bytearray:
        data = bytearray(end - start)
        for future in self.read_into(memoryview(data), start):
            future.result()
        return data

    def _get(self, out: memoryview, start: int) -> None:
        end = start + len(out)
        for attempt in range(MAX_ATTEMPTS):
            try:
                reply = self.client.get_object(
                    Bucket=self.location.bucket, Key=self.location.key,
                    Range=f"bytes={start}-{end - 1}", IfMatch=f'"{self.etag}"')
                data = reply["Body"].read()
                if len(data) != len(out):
                    raise _ShortRead(f"{len(data)} of {len(out)} bytes")
                out[:] = data
                with self._lock:
                    self.bytes_read += len(data)
                return
            except (ClientError, BotoCoreError) as exc:
                if not isinstance(exc, S3_RETRYABLE_DOWNLOAD_ERRORS):
                    raise describe_failure(self.location, exc) from None
                failure = exc
            except (_ShortRead, *S3_RETRYABLE_DOWNLOAD_ERRORS) as exc:
                failure = exc
            delay = min(20.0, 0.2 * 2 ** attempt)
            log.warning("%s bytes %d-%d: %s; retrying in %.1f s", self.location, start, end,
                        failure, delay)
            time.sleep(delay)
        raise StartupError(f"option.model_id={self.location}: reading bytes {start}-{end} "
                           f"failed {MAX_ATTEMPTS} times ({failure}): check the network and "
                           "the endpoint")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int              # absolute byte offsets in the object
    end: int

    @property
    def element_size(self) -> int:
        return torch.tensor([], dtype=DTYPES[self.dtype]).element_size()


def read_header(reader: RangeReader, size: int) -> dict[str, TensorInfo]:
    probe = bytes(reader.read(0, min(HEADER_PROBE, size)))
    if len(probe) < 8:
        raise StartupError(f"{reader.location} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", probe[:8])
    if 8 + length > size:
        raise StartupError(f"{reader.location} is not a safetensors file (bad header length)")
    raw = probe[8:8 + length]
    if len(raw) < length:
        raw += bytes(reader.read(len(probe), 8 + length))
    header = json.loads(raw)
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in DTYPES:
            raise StartupError(f"{reader.location}: tensor {name} has dtype {meta['dtype']}, "
                               "which this loader does not read")
        begin, end = meta["data_offsets"]
        tensors[name] = TensorInfo(meta["dtype"], tuple(meta["shape"]), 8 + length + begin,
                                   8 + length + end)
    return tensors


# -- which bytes a slice needs ---------------------------------------------------------------------

Box = tuple[tuple[int, int], ...]      # (start, stop) per dimension


def normalize(index, shape: tuple[int, ...]) -> tuple[Box, tuple[int, ...]]:
    """A safetensors-style index as a box, plus the dimensions an integer index drops."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1:]
    if len(index) > len(shape):
        raise IndexError(f"too many indices ({len(index)}) for a tensor of shape {shape}")
    index = index + (slice(None),) * (len(shape) - len(index))
    box, dropped = [], []
    for dim, (item, size) in enumerate(zip(index, shape)):
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step != 1:
                raise IndexError("streamed slices take step 1 only")
            box.append((start, max(start, stop)))
        else:
            i = int(item) + (size if int(item) < 0 else 0)
            if not 0 <= i < size:
                raise IndexError(f"index {item} out of range for dimension {dim} of {shape}")
            box.append((i, i + 1))
            dropped.append(dim)
    return tuple(box), tuple(dropped)


@dataclass
class Plan:
    """Byte spans to fetch for a box, and how to cut the box out of them."""
    spans: list[tuple[int, int]]          # absolute (begin, end)
    rows_view: tuple[int, ...] | None     # one covering span: view it as this shape ...
    row_index: list[int] | None           # ... and keep these rows of it
    cut: int                              # dimension the box narrows last
    cut_range: tuple[int, int]


def plan(info: TensorInfo, box: Box) -> Plan:
    shape, size = info.shape, info.element_size
    partial = [d for d, (a, b) in enumerate(box) if (a, b) != (0, shape[d])]
    if not partial:
        return Plan([(info.begin, info.end)], None, None, 0, (0, shape[0] if shape else 1))
    cut = partial[-1]
    inner = math.prod(shape[cut + 1:])
    row_elems = shape[cut] * inner                  # one "row": all of dims >= cut
    outer_shape = shape[:cut]
    outer_ranges = [range(a, b) for a, b in box[:cut]]
    rows = [0]
    for dim, r in zip(outer_shape, outer_ranges):     # flat indices of the wanted rows
        rows = [row * dim + i for row in rows for i in r]
    a, b = box[cut]
    if not rows or a == b:
        return Plan([], None, [], cut, (a, b))
    run = (b - a) * inner * size
    gap = (row_elems * size) - run
    first, last = rows[0], rows[-1]
    if len(rows) == 1 or gap < MERGE_GAP_BYTES:
        begin = info.begin + first * row_elems * size
        end = info.begin + (last + 1) * row_elems * size
        if len(rows) == 1:        # a single row: only the run itself
            begin += a * inner * size
            end = begin + run
            return Plan([(begin, end)], (1, b - a, inner), [0], cut, (0, b - a))
        return Plan([(begin, end)], (last - first + 1, shape[cut], inner),
                    [r - first for r in rows], cut, (a, b))
    spans = [(info.begin + (r * row_elems + a * inner) * size,
              info.begin + (r * row_elems + b * inner) * size) for r in rows]
    return Plan(spans, None, None, cut, (0, b - a))


class PendingSlice:
    """A slice being fetched; result() assembles the tensor."""

    def __init__(self, reader: RangeReader, info: TensorInfo, box: Box,
                 dropped: tuple[int, ...]):
        self.info, self.box, self.dropped = info, box, dropped
        self.plan = plan(info, box)
        self.nbytes = sum(e - b for b, e in self.plan.spans)
        self.buffers = [bytearray(e - b) for b, e in self.plan.spans]
        self.futures = [f for buf, (b, _) in zip(self.buffers, self.plan.spans)
                        for f in reader.read_into(memoryview(buf), b)]

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()

    def result(self) -> torch.Tensor:
        for future in self.futures:
            future.result()
        dtype = DTYPES[self.info.dtype]
        box_shape = [b - a for a, b in self.box]
        p = self.plan
        if not p.spans:
            value = torch.empty(box_shape, dtype=dtype)
        elif p.rows_view is None:
            flat = [torch.frombuffer(buf, dtype=dtype) for buf in self.buffers]
            value = (flat[0] if len(flat) == 1 else torch.cat(flat)).reshape(box_shape)
        else:
            rows = torch.frombuffer(self.buffers[0], dtype=dtype).reshape(p.rows_view)
            if p.row_index != list(range(p.rows_view[0])):
                rows = rows[torch.tensor(p.row_index)]
            a, b = p.cut_range
            value = rows[:, a:b, :].reshape(box_shape)
        for dim in reversed(self.dropped):
            value = value.squeeze(dim)
        return value


# -- the safe_open look-alike ----------------------------------------------------------------------

def _kind(name: str) -> str:
    """Tensors of the same kind in every layer share a name once layer numbers are masked."""
    return re.sub(r"\.\d+\.", ".#.", name)


class RemoteSlice:
    def __init__(self, handle: "RemoteSafetensors", name: str):
        self.handle, self.name = handle, name
        self.info = handle.tensors[name]

    def get_shape(self) -> list[int]:
        return list(self.info.shape)

    def get_dtype(self) -> str:
        return self.info.dtype

    def __getitem__(self, index) -> torch.Tensor:
        return self.handle.read(self.name, index)


class RemoteSafetensors:
    """One .safetensors object: keys(), get_slice(name), as safe_open gives them."""

    def __init__(self, source: "S3StreamCheckpoint", reader: RangeReader,
                 tensors: dict[str, TensorInfo]):
        self.source, self.reader, self.tensors = source, reader, tensors
        self.order = sorted(tensors, key=lambda n: tensors[n].begin)
        self.position = {name: i for i, name in enumerate(self.order)}
        self.ahead: dict[str, PendingSlice] = {}

    def keys(self) -> list[str]:
        return list(self.order)

    def get_slice(self, name: str) -> RemoteSlice:
        if name not in self.tensors:
            raise KeyError(name)
        return RemoteSlice(self, name)

    def read(self, name: str, index) -> torch.Tensor:
        info = self.tensors[name]
        box, dropped = normalize(index, info.shape)
        self.source.learn(_kind(name), info.shape, index)
        pending = self.ahead.pop(name, None)
        if pending is not None and (pending.box, pending.dropped) != (box, dropped):
            pending.cancel()
            self.source.wasted_bytes += pending.nbytes
            pending = None
        if pending is None:
            pending = PendingSlice(self.reader, info, box, dropped)
        else:
            self.source.prefetch_hits += 1
        self.source.slice_bytes += pending.nbytes
        self.prefetch_after(name)
        return pending.result()

    def prefetch_after(self, name: str) -> None:
        budget = PREFETCH_BYTES - sum(p.nbytes for p in self.ahead.values())
        for later in self.order[self.position[name] + 1:]:
            if budget <= 0:
                break
            if later in self.ahead:
                continue
            info = self.tensors[later]
            index = self.source.guess(_kind(later), info.shape)
            if index is None:
                continue
            box, dropped = normalize(index, info.shape)
            pending = PendingSlice(self.reader, info, box, dropped)
            self.ahead[later] = pending
            budget -= pending.nbytes

    def close(self) -> None:
        for pending in self.ahead.values():
            pending.cancel()
            self.source.wasted_bytes += pending.nbytes
        self.ahead.clear()


class S3StreamCheckpoint:
    """CheckpointSource of the safetensors under an s3:// prefix (engine/weights.py)."""

    def __init__(self, url: str, client=None):
        self.location = parse_s3_url(url)
        self.description = url
        self.client = client or make_client(CONCURRENCY)
        self.pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="s3-stream")
        self.patterns: dict[tuple[str, tuple[int, ...]], object] = {}
        self.wasted_bytes = 0      # fetched ahead on a guess the loader did not take
        self.slice_bytes = 0       # bytes of the slices the loader took
        self.prefetch_hits = 0
        self.readers: list[RangeReader] = []
        try:
            self.files = self._shards()
        except (ClientError, BotoCoreError) as exc:
            raise describe_failure(url, exc) from None

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.readers)

    def _shards(self):
        prefix = self.location.prefix
        objects = {o.relpath: o for o in list_objects(self.client, self.location, prefix)}
        names = sorted(n for n in objects if n.endswith(".safetensors") and "/" not in n)
        index = objects.get("model.safetensors.index.json")
        if index is not None:
            reader = RangeReader(self.client, self.pool, S3Url(self.location.bucket, index.key),
                                 index.etag)
            weight_map = json.loads(bytes(reader.read(0, index.size)))["weight_map"]
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if n not in objects]
            if missing:
                raise StartupError(f"option.model_id={self.description}: the index names shards "
                                   f"that are not there: {', '.join(missing[:5])}")
        if not names:
            raise StartupError(f"option.model_id={self.description}: no *.safetensors under "
                               f"s3://{self.location.bucket}/{prefix}: streaming reads "
                               "safetensors only")
        return [objects[n] for n in names]

    def learn(self, kind: str, shape: tuple[int, ...], index) -> None:
        self.patterns[(kind, shape)] = index

    def guess(self, kind: str, shape: tuple[int, ...]):
        return self.patterns.get((kind, shape))

    def open_files(self):
        # every header at once (one small GET each), then the files in order
        readers = [RangeReader(self.client, self.pool,
                               S3Url(self.location.bucket, obj.key), obj.etag)
                   for obj in self.files]
        self.readers.extend(readers)
        headers = [self.pool.submit(read_header, reader, obj.size)
                   for reader, obj in zip(readers, self.files)]
        started = time.monotonic()
        for reader, header in zip(readers, headers):
            yield self._open(reader, header.result())
        log.info("streamed %s: %.0f MB read in %.1f s (%.0f MB guessed ahead and unused)",
                 self.description, self.bytes_read / 1e6, time.monotonic() - started,
                 self.wasted_bytes / 1e6)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def _open(self, reader: RangeReader, tensors: dict[str, TensorInfo]):
        handle = RemoteSafetensors(self, reader, tensors)
        try:
            yield handle
        finally:
            handle.close()
