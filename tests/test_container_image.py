"""The CPU image, really built and run with podman, called from the host over HTTP.

`IMAGE serve` as SageMaker runs it: a model mounted at /opt/ml/model, SageMaker / TGI-style
environment variables passed through, boto3's runtime client against the container, SIGTERM
draining a stream in flight (with tini as PID 1, and under `--init`), and the embedded SmolLM2
served when nothing is mounted. The only skip: podman cannot run on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import boto3
import pytest
import requests
from botocore.config import Config

from conftest import REPO
from podman_helpers import (check_embedded_model_answers, check_sigterm_drains, podman_exec,
                            podman_problem)
from podman_helpers import containers  # noqa: F401 - the fixture
from tiny_models import build_model, reference_greedy

pytestmark = pytest.mark.slow

# SERVE_CPU_TEST_IMAGE: another tag, for a run beside CI's (which builds the default one).
IMAGE = os.environ.get("SERVE_CPU_TEST_IMAGE", "localhost/serve:cpu-test")
BUILD_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def image():
    problem = podman_problem()
    if problem:
        pytest.skip(problem)
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "docker/build-image.sh"), "--engine", "podman", "--tag", IMAGE],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"image build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    print(f"\n[container test] image {IMAGE} built in {time.monotonic() - started:.1f}s")
    return IMAGE


def runtime_client(base: str):
    return boto3.client(
        "sagemaker-runtime", endpoint_url=base, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}, read_timeout=120))


def test_mounted_model_served_with_sagemaker_environment(image, containers, tmp_path):
    model = build_model(tmp_path / "llama")
    container = containers(image, model, env={
        "MAX_CONCURRENT_REQUESTS": "17",            # TGI-style name -> job_queue_size
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",          # -> max_request_size
        "OPTION_MAX_ROLLING_BATCH_SIZE": "4"})
    ready = container.wait_healthy()
    print(f"\n[container test] tiny LLM container healthy in {ready:.1f}s")

    assert requests.get(container.url("/ping"), timeout=5).json() == {"status": "Healthy"}
    name = requests.get(container.url("/models"), timeout=5).json()["models"][0]["modelName"]
    described = requests.get(container.url(f"/models/{name}"), timeout=5).json()[0]
    assert described["jobQueueSize"] == 17
    too_big = requests.post(container.url("/invocations"), data=b"x" * (1024 * 1024 + 10),
                            headers={"Content-Type": "application/json"}, timeout=30)
    assert too_big.status_code == 413

    tokenizer_ids = requests.post(container.url("/invocations"), timeout=60, json={
        "inputs": "def main():", "parameters": {"max_new_tokens": 12, "ignore_eos": True,
                                                 "details": True}}).json()
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(str(model / "tokenizer.json")).encode("def main():").ids
    served = [t["id"] for t in tokenizer_ids["details"]["tokens"]]
    assert served == reference_greedy(model, [prompt], 12)[0]

    client = runtime_client(f"http://127.0.0.1:{container.port}")
    stream = client.invoke_endpoint_with_response_stream(
        EndpointName="in-container", ContentType="application/json", Body=json.dumps({
            "inputs": "def main():", "parameters": {"max_new_tokens": 12, "ignore_eos": True},
            "stream": True}))
    lines = b"".join(e["PayloadPart"]["Bytes"] for e in stream["Body"]).decode().splitlines()
    assert json.loads(lines[-1])["generated_text"] == tokenizer_ids["generated_text"]


@pytest.mark.parametrize("init", [False, True], ids=["tini-pid1", "podman-init"])
def test_sigterm_drains_the_stream_in_flight_then_exits_zero(image, containers, tmp_path, init):
    check_sigterm_drains(containers, image, tmp_path, init)


def test_embedded_smollm2_served_when_nothing_is_mounted(image, containers):
    check_embedded_model_answers(containers, image)


def test_other_commands_run_as_given(image):
    result = podman_exec(image, "python", "-c",
                         "import container, djl_python, torch; print(torch.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("2.13.0")


def test_boto3_example_deploys_to_the_image_in_local_mode(image, tmp_path, monkeypatch):
    """deploy_boto3 on moto's S3 + SageMaker mock, its endpoint hosted by this image."""
    import sys

    sys.path.insert(0, str(REPO / "sagemaker_examples"))
    import deploy_boto3
    from local_aws import LOCAL_INSTANCE_TYPE, LOCAL_ROLE_ARN, LocalAws

    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER",
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(key, raising=False)
    model = build_model(tmp_path / "llama")
    args = deploy_boto3.build_parser().parse_args([
        "--local", "--model-dir", str(model), "--image", image, "--endpoint-name", "in-image",
        "--env", "OMP_NUM_THREADS=1", "--payload", json.dumps(
            {"inputs": "def main():", "parameters": {"max_new_tokens": 8, "ignore_eos": True}})])
    with LocalAws(image=image, container_engine="podman") as local:
        s3 = local.client("s3")
        s3.create_bucket(Bucket="models")
        args.bucket, args.role_arn, args.instance_type, args.poll_seconds = (
            "models", LOCAL_ROLE_ARN, LOCAL_INSTANCE_TYPE, 1)
        hosted = []
        result = deploy_boto3.run(
            args, local.client("sagemaker"), s3, local.runtime_client,
            on_created=lambda name: hosted.append(local.host_endpoint(name)))
        assert result["answer"]["generated_text"] == result["streamed"] != ""
        assert "listening on" in hosted[0].log()           # serve ran inside the container
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"name={hosted[0].container}"],
                          capture_output=True, text=True)
    assert left.stdout.strip() == ""                        # and the container is gone
