"""A real S3 for tests: moto_server on 127.0.0.1, and a proxy in front of it that counts the
bytes each object sends and can answer 500/503, drop connections, cut or corrupt bodies."""

from __future__ import annotations

import collections
import http.client
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests

from conftest import free_port

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    def __init__(self, extra_env: dict | None = None):
        self.port = free_port()
        env = dict(os.environ, **DUMMY_CREDENTIALS, **(extra_env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.endpoint, timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def s3_env(endpoint: str, **extra) -> dict:
    """What a process needs to reach this S3 (dummy credentials, no real AWS config)."""
    env = dict(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=endpoint,
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def client(endpoint: str, **credentials):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=credentials.get("key", "testing"),
                        aws_secret_access_key=credentials.get("secret", "testing"))


def upload_dir(s3, directory: Path, bucket: str, prefix: str) -> dict[str, int]:
    """Upload every file (multipart for big ones, as the CLI does); {key: size}."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
    sizes = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            key = prefix + path.relative_to(directory).as_posix()
            s3.upload_file(str(path), bucket, key, Config=config)
            sizes[key] = path.stat().st_size
    return sizes


class Fault:
    """What the proxy does to the next `count` requests that match."""

    def __init__(self, kind: str, count: int, match=lambda method, key: True):
        self.kind, self.left, self.match = kind, count, match


class S3Proxy:
    """HTTP proxy to moto: per-object GET byte counts, and injected faults."""

    def __init__(self, upstream_port: int, delay_per_mb: float = 0.0):
        self.upstream_port = upstream_port
        self.delay_per_mb = delay_per_mb
        self.lock = threading.Lock()
        self.object_bytes: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.faults: list[Fault] = []
        self.injected: collections.Counter = collections.Counter()
        self.stopped = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_fault(self, kind: str, count: int = 1, match=lambda method, key: True) -> None:
        with self.lock:
            self.faults.append(Fault(kind, count, match))

    def reset(self) -> None:
        with self.lock:
            self.object_bytes.clear()
            self.requests.clear()
            self.faults.clear()
            self.injected.clear()

    def _fault_for(self, method: str, key: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.left > 0 and fault.match(method, key):
                    fault.left -= 1
                    self.injected[fault.kind] += 1
                    return fault.kind
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        key = unquote(parts.path.lstrip("/")) if not parts.query.startswith("list") else ""
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        method = request.command
        with self.lock:
            self.requests[(method, key)] += 1
        fault = self._fault_for(method, key)
        if fault == "stall":                      # accept, then never answer (until stop)
            self.stopped.wait(600)
            request.close_connection = True
            return
        if fault == "drop":                       # connection closed, no answer
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if fault in ("500", "503"):
            code, name = (503, "SlowDown") if fault == "503" else (500, "InternalError")
            payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{name}</Code>"
                       f"<Message>injected</Message></Error>").encode()
            request.send_response(code)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "connection"}
        upstream.request(method, request.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        upstream.close()
        if method == "GET" and key and reply.status in (200, 206):
            with self.lock:
                self.object_bytes[key] += len(data)
            if fault == "corrupt" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
        request.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date",
                                    "server"):
                request.send_header(name, value)
        request.send_header("Content-Length", reply.getheader("Content-Length", "0")
                            if method == "HEAD" else str(len(data)))
        request.end_headers()
        if method == "HEAD":
            return
        if fault == "cut":                        # half the body, then the connection drops
            request.wfile.write(data[:len(data) // 2])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if self.delay_per_mb:
            for offset in range(0, len(data), 1 << 20):
                request.wfile.write(data[offset:offset + (1 << 20)])
                time.sleep(self.delay_per_mb)
        else:
            request.wfile.write(data)

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_proxy(moto):
    proxy = S3Proxy(moto.port)
    yield proxy
    proxy.stop()


_buckets = iter(range(10**6))


@pytest.fixture
def bucket(moto):
    """A fresh bucket per test."""
    name = f"models-{os.getpid()}-{next(_buckets)}"
    client(moto.endpoint).create_bucket(Bucket=name)
    return name
