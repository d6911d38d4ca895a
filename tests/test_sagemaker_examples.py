"""sagemaker_examples in LOCAL mode: moto's S3 and SageMaker mock for the control plane (each
call also checked against botocore's service model), a real `serve` as the endpoint, boto3 and
the sagemaker SDK (its LocalSagemakerRuntimeClient too) as the callers."""

from __future__ import annotations

import json
import os
import random
import sys

import botocore.session
import numpy
import pytest
from botocore.validate import ParamValidator

from conftest import REPO, ServeProcess
from tiny_models import build_model

sys.path.insert(0, str(REPO / "sagemaker_examples"))
import bench_endpoint  # noqa: E402
import deploy_boto3  # noqa: E402
import stream_text  # noqa: E402
from local_aws import LOCAL_INSTANCE_TYPE, LOCAL_ROLE_ARN, LocalAws  # noqa: E402

LMI_PAYLOAD = json.dumps({"inputs": "def main():",
                          "parameters": {"max_new_tokens": 12, "ignore_eos": True}})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("examples") / "llama")


@pytest.fixture
def local_env(monkeypatch):
    """LocalAws sets AWS_* variables for this process; keep the test's environment clean."""
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER",
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def require_sdk() -> None:
    """The sagemaker SDK is an optional extra of the package, but these tests need it."""
    try:
        import sagemaker.core  # noqa: F401
    except ImportError:
        pytest.fail("the sagemaker SDK is not installed: pip install -e '.[sagemaker]' "
                    "(make test installs it)")


def docker_stub(tmp_path, monkeypatch) -> None:
    """The SDK's local client runs `docker context inspect`; a docker that fails sends it to
    localhost (DESIGN.md §5), whether or not a docker CLI is installed here."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "docker").write_text("#!/bin/sh\necho 'docker: no engine here' >&2\nexit 1\n")
    (stub / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")


class CallRecorder:
    """Every call a client makes, validated again against botocore's own service model."""

    def __init__(self, client):
        self.calls: list[tuple[str, dict]] = []
        self.model = botocore.session.get_session().get_service_model(
            client.meta.service_model.service_name)
        client.meta.events.register("provide-client-params", self.record)

    def record(self, params, model, **_kwargs):
        report = ParamValidator().validate(params, self.model.operation_model(model.name)
                                           .input_shape)
        assert not report.has_errors(), report.generate_report()
        self.calls.append((model.name, dict(params)))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def params(self, name: str) -> dict:
        return next(params for call, params in self.calls if call == name)


def test_deploy_boto3_local_on_moto_sagemaker_mock_checked_against_botocore_model(
        tiny_model, local_env):
    args = deploy_boto3.build_parser().parse_args([
        "--local", "--model-dir", str(tiny_model), "--endpoint-name", "boto3-example",
        "--payload", LMI_PAYLOAD, "--env", "OPTION_MAX_ROLLING_BATCH_SIZE=4"])
    with LocalAws() as local:
        sagemaker, s3 = local.client("sagemaker"), local.client("s3")
        recorder = CallRecorder(sagemaker)
        s3.create_bucket(Bucket="models")
        args.bucket, args.role_arn, args.instance_type, args.poll_seconds = (
            "models", LOCAL_ROLE_ARN, LOCAL_INSTANCE_TYPE, 1)
        result = deploy_boto3.run(args, sagemaker, s3, local.runtime_client,
                                  on_created=local.host_endpoint)
        # What the endpoint served came from the uploaded copy, with the model's environment.
        assert result["answer"]["generated_text"] == result["streamed"]
        assert len(result["streamed"]) > 0
        assert recorder.names()[:3] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
        variant = recorder.params("CreateEndpointConfig")["ProductionVariants"][0]
        assert variant["ModelDataDownloadTimeoutInSeconds"] > 0
        assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] > 0
        assert variant["VolumeSizeInGB"] > 0
        container = recorder.params("CreateModel")["PrimaryContainer"]
        assert container["Environment"] == {"OPTION_MAX_ROLLING_BATCH_SIZE": "4"}
        assert container["ModelDataSource"]["S3DataSource"]["S3Uri"] == \
            "s3://models/models/boto3-example/"
        # Cleaned up: nothing left in the control plane or the bucket.
        assert recorder.names()[-3:] == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]
        assert sagemaker.list_endpoints()["Endpoints"] == []
        assert sagemaker.list_models()["Models"] == []
        assert s3.list_objects_v2(Bucket="models").get("KeyCount") == 0


def test_deploy_sdk_local_on_moto_with_sdk_local_runtime_client(tiny_model, local_env,
                                                                 monkeypatch, tmp_path):
    require_sdk()
    import deploy_sdk

    docker_stub(tmp_path, monkeypatch)
    result = deploy_sdk.main(["--local", "--model-dir", str(tiny_model), "--endpoint-name",
                              "sdk-example", "--payload", LMI_PAYLOAD])
    expected = result["answer"]["generated_text"]
    assert expected and result["streamed"] == expected
    assert result["local_client"]["generated_text"] == expected


def test_sdk_local_runtime_client_invokes_serve(tiny_model, local_env, monkeypatch, tmp_path):
    require_sdk()
    from sagemaker.core.local.local_session import LocalSagemakerRuntimeClient

    docker_stub(tmp_path, monkeypatch)
    with ServeProcess(tiny_model) as server:
        client = LocalSagemakerRuntimeClient(config={"local": {"serving_port": server.port}})
        response = client.invoke_endpoint(Body=LMI_PAYLOAD, EndpointName="any",
                                          ContentType="application/json",
                                          CustomAttributes="a=1", InferenceId="sdk-1")
        body = json.loads(response["Body"].read())
        assert len(body["generated_text"]) > 0
        assert response["ContentType"] == "application/json"


def test_bench_measures_a_real_endpoint(tiny_model):
    with ServeProcess(tiny_model) as server:
        runtime = bench_endpoint.runtime_client(server.base, 2)
        report = bench_endpoint.run(runtime, "bench", concurrency=2, requests=4,
                                    prompt="def main():", max_new_tokens=8)
    assert report.failures == 0
    assert report.output_tokens == 32                # ignore_eos: exactly 4 x 8 tokens
    assert report.output_tokens_per_s > 0
    assert 0 < report.ttft_ms["p50"] <= report.ttft_ms["p99"] <= report.e2e_ms["p99"]
    assert report.tpot_ms["p50"] > 0


def test_bench_counts_failures_instead_of_crashing(tiny_model):
    with ServeProcess(tiny_model) as server:
        runtime = bench_endpoint.runtime_client(server.base, 1)
        bad = bench_endpoint.one_request(runtime, "bench", b'{"inputs": "x", "stream": true, '
                                                           b'"parameters": {"top_p": 7}}')
    assert not bad.ok and "ModelError" in bad.error


def test_percentile_matches_numpy():
    rng = random.Random(3)
    for size in (1, 2, 5, 100):
        values = [rng.uniform(0, 10) for _ in range(size)]
        for q in (0, 50, 90, 99, 100):
            assert bench_endpoint.percentile(values, q) == pytest.approx(
                numpy.percentile(values, q))
    assert bench_endpoint.percentile([], 50) == 0.0


def test_stream_lines_survive_any_split_into_parts():
    text = (b'{"token": {"text": "Hel"}}\n{"token": {"text": "lo \\u00e9"}}\n'
            b'{"choices": [{"delta": {"content": "!"}}]}\n{"choices": []}\n')
    for cut in range(1, len(text)):
        events = [{"PayloadPart": {"Bytes": text[:cut]}}, {"PayloadPart": {"Bytes": text[cut:]}}]
        assert "".join(stream_text.token_texts(events)) == "Hello é!"
    one_byte_parts = [{"PayloadPart": {"Bytes": text[i:i + 1]}} for i in range(len(text))]
    assert stream_text.stream_text({"Body": one_byte_parts}) == "Hello é!"
