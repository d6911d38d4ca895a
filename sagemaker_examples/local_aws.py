"""LOCAL mode for the examples: the AWS side on this machine, so they run with no account.

- S3 and SageMaker's control plane (create_model, create_endpoint_config, create_endpoint,
  describe_*, waiters, delete_*) are moto's mock server (`moto_server`), reached through the
  same boto3 calls as the real services.
- An endpoint's container is `serve` itself: `LocalAws.host_endpoint(name)` does what SageMaker
  does after create_endpoint (read the endpoint's config and model, download the model data
  from S3 into a directory, start the container with the model's Environment, wait for /ping),
  then boto3's `sagemaker-runtime` client reaches it through `endpoint_url`. `serve` runs as a
  local process by default, or as the image (`image=...` with podman or docker).

`LocalAws.start()` also sets AWS_ENDPOINT_URL_S3 / _SAGEMAKER / _SAGEMAKER_RUNTIME in this
process (the runtime URL is the port the first hosted endpoint will listen on), so clients made
without `endpoint_url` (the sagemaker SDK's) reach the local services too.

    python sagemaker_examples/local_aws.py        # moto on a free port, until Ctrl-C
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

REGION = "us-east-1"
LOCAL_ROLE_ARN = "arn:aws:iam::123456789012:role/local-sagemaker-execution"
LOCAL_INSTANCE_TYPE = "ml.m5.xlarge"   # this machine is a CPU host; moto knows this type
_ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER",
             "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (a notebook kernel stopped mid-run)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _wait_http(url: str, process: subprocess.Popen, timeout: float, what: str,
               log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"{what} exited with code {process.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f}s")


class LocalEndpoint:
    """One hosted endpoint: the `serve` process (or container) and where it listens."""

    def __init__(self, name: str, process: subprocess.Popen, port: int, model_dir: Path,
                 log_path: Path, container: str | None, engine: str | None):
        self.name, self.process, self.port = name, process, port
        self.model_dir, self.log_path = model_dir, log_path
        self.container, self.engine = container, engine

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> None:
        if self.container:
            subprocess.run([self.engine, "rm", "-f", "-t", "30", self.container],
                           capture_output=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)       # serve drains, then exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.model_dir, ignore_errors=True)


class LocalAws:
    """moto_server for S3 + SageMaker, and `serve` for the endpoints created there."""

    def __init__(self, workdir: str | os.PathLike | None = None, image: str | None = None,
                 container_engine: str | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="serve-local-aws-"))
        self.image = image
        self.engine = container_engine or ("podman" if shutil.which("podman") else "docker")
        self.moto: subprocess.Popen | None = None
        self.moto_port = 0
        # The port of the first hosted endpoint, known up front: the SDK makes its runtime
        # client once per session, from AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, before any endpoint.
        self.runtime_port = 0
        self.endpoints: dict[str, LocalEndpoint] = {}
        self._saved_env: dict[str, str | None] = {}

    # AWS side ---------------------------------------------------------------------------------
    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def start(self) -> "LocalAws":
        moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        self.moto_port = _free_port()
        log_path = self.workdir / "moto_server.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.moto = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=log_path.open("w"), stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        _wait_http(self.aws_url + "/moto-api/", self.moto, 60, "moto_server", log_path)
        self.runtime_port = _free_port()
        self._set_env({"AWS_ENDPOINT_URL_S3": self.aws_url,
                       "AWS_ENDPOINT_URL_SAGEMAKER": self.aws_url,
                       "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://127.0.0.1:{self.runtime_port}",
                       "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_DEFAULT_REGION": REGION})
        return self

    def _set_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def client(self, service: str):
        """A boto3 client for s3 / sagemaker on moto (sagemaker-runtime: `runtime_client`)."""
        return boto3.client(service, endpoint_url=self.aws_url, region_name=REGION,
                            aws_access_key_id="local", aws_secret_access_key="local")

    def sdk_session(self) -> boto3.Session:
        """A boto3 session for the sagemaker SDK: its clients reach moto via AWS_ENDPOINT_URL_*.

        moto describes resources with empty structures (`"VpcConfig": {}`,
        `"DataCaptureConfig": {}`) that the SDK's strict shapes refuse; SageMaker leaves such
        keys out, and so does this session's response hook.
        """
        session = boto3.Session(region_name=REGION, aws_access_key_id="local",
                                aws_secret_access_key="local")
        session.events.register("after-call.sagemaker", _drop_empty_structures)
        return session

    def runtime_client(self, endpoint_name: str):
        """boto3's sagemaker-runtime client for a hosted endpoint, through `endpoint_url`."""
        return boto3.client("sagemaker-runtime", endpoint_url=self.endpoints[endpoint_name].url,
                            region_name=REGION, aws_access_key_id="local",
                            aws_secret_access_key="local")

    # hosting ----------------------------------------------------------------------------------
    def host_endpoint(self, endpoint_name: str, timeout: float = 600,
                      extra_env: dict | None = None) -> LocalEndpoint:
        """Start the container of an endpoint that exists in the (mock) control plane."""
        sagemaker = self.client("sagemaker")
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        config = sagemaker.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"])
        variant = config["ProductionVariants"][0]
        model = sagemaker.describe_model(ModelName=variant["ModelName"])
        container = model.get("PrimaryContainer") or model["Containers"][0]
        model_dir = Path(tempfile.mkdtemp(prefix=f"{endpoint_name}-model-", dir=self.workdir))
        self._download_model_data(container, model_dir)
        env = {**container.get("Environment", {}), **(extra_env or {})}
        in_use = {hosted.port for hosted in self.endpoints.values()}
        port = self.runtime_port if self.runtime_port not in in_use else _free_port()
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        log_path = self.workdir / f"{endpoint_name}.log"
        if self.image:
            process, name = self._run_container(env, model_dir, log_path)
        else:
            process, name = self._run_process(env, model_dir, log_path), None
        hosted = LocalEndpoint(endpoint_name, process, port, model_dir, log_path, name,
                               self.engine)
        self.endpoints[endpoint_name] = hosted
        try:
            _wait_http(hosted.url + "/ping", process, timeout, f"endpoint {endpoint_name}",
                       log_path)
        except BaseException:
            self.stop_endpoint(endpoint_name)
            raise
        return hosted

    def _download_model_data(self, container: dict, model_dir: Path) -> None:
        """What SageMaker does before starting the container: S3 -> /opt/ml/model."""
        source = container.get("ModelDataSource", {}).get("S3DataSource")
        uri = source["S3Uri"] if source else container.get("ModelDataUrl")
        if not uri:
            return                                  # e.g. HF_MODEL_ID in the environment
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        s3 = self.client("s3")
        if source is None or source.get("S3DataType") == "S3Object":
            raise ValueError(f"{uri}: LOCAL mode hosts uncompressed S3Prefix model data")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix):].lstrip("/")
                target = model_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))

    def _run_process(self, env: dict, model_dir: Path, log_path: Path) -> subprocess.Popen:
        child_env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
        # One intra-op thread unless told otherwise: a laptop or CI host runs the client, moto
        # and serve side by side, and oversubscribed OpenMP threads spin (measured: 16x slower
        # decoding on a busy 2-core host).
        child_env.setdefault("OMP_NUM_THREADS", "1")
        child_env.update(env)
        return subprocess.Popen(
            [sys.executable, "-m", "container", "--model-dir", str(model_dir), "--host",
             "127.0.0.1"], env=child_env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
            cwd=self.workdir, preexec_fn=_die_with_parent)

    def _run_container(self, env: dict, model_dir: Path, log_path: Path):
        name = f"serve-local-{uuid_hex()}"
        args = [self.engine, "run", "--rm", "--name", name, "--network", "host",
                "-v", f"{model_dir}:/opt/ml/model:ro"]
        if self.engine == "podman":
            args += ["--runtime", "runc", "--ulimit", "nofile=20000:20000",
                     "--ulimit", "nproc=32768:32768"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        process = subprocess.Popen(args + [self.image, "serve"], stdout=log_path.open("w"),
                                   stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        return process, name

    def stop_endpoint(self, endpoint_name: str) -> None:
        hosted = self.endpoints.pop(endpoint_name, None)
        if hosted:
            hosted.stop()

    # lifetime ---------------------------------------------------------------------------------
    def stop(self) -> None:
        for name in list(self.endpoints):
            self.stop_endpoint(name)
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def __enter__(self) -> "LocalAws":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _drop_empty_structures(parsed=None, **_kwargs) -> None:
    if isinstance(parsed, dict):
        for key in [k for k, v in parsed.items() if v == {} and k != "ResponseMetadata"]:
            del parsed[key]


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


if __name__ == "__main__":
    with LocalAws() as local:
        print(f"moto (S3 + SageMaker control plane) on {local.aws_url}; Ctrl-C stops it",
              flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
