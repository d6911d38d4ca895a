"""boto3's sagemaker-runtime client, unchanged, against a real `serve` (endpoint_url=local).

InvokeEndpoint and InvokeEndpointWithResponseStream, for handler models and the LLM engine:
bodies, content types, custom attributes, inference ids, ModelError, and event-stream framing
parsed by botocore itself.
"""

from __future__ import annotations

import json
import time

import boto3
import pytest
import requests
from botocore.config import Config

from conftest import handler_dir, write_model
from tiny_models import build_model, default_model_dir


def runtime_client(server):
    return boto3.client(
        "sagemaker-runtime", endpoint_url=server.base, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}, read_timeout=120))


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    from conftest import ServeProcess

    server = ServeProcess(handler_dir(tmp_path_factory.mktemp("echo"), "echo")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from conftest import ServeProcess

    model = build_model(tmp_path_factory.mktemp("tiny") / "llama")
    server = ServeProcess(model).start()
    yield server
    server.stop()


def test_invoke_endpoint_reaches_the_handler_with_attributes_and_inference_id(echo_server):
    client = runtime_client(echo_server)
    response = client.invoke_endpoint(
        EndpointName="my-endpoint", Body=json.dumps({"x": 1}), ContentType="application/json",
        Accept="application/json", CustomAttributes="tenant=acme; trace=on",
        InferenceId="inference-42")
    body = json.loads(response["Body"].read())
    assert body["echo"] == {"x": 1}
    assert body["tenant"] == "acme"
    assert body["content_type"] == "application/json"
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-sagemaker-inference-id"] == "inference-42"
    assert headers["x-request-id"] == "inference-42"


ATTRIBUTE_HANDLER = '''
from djl_python import Input, Output


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    out = Output().add_as_json({"ok": True})
    out.add_property("X-Amzn-SageMaker-Custom-Attributes", "seen=" + inputs.get_property("tenant"))
    return out
'''


def test_custom_attributes_set_by_the_handler_come_back(tmp_path):
    from conftest import ServeProcess

    with ServeProcess(write_model(tmp_path / "attributes", ATTRIBUTE_HANDLER)) as server:
        response = runtime_client(server).invoke_endpoint(
            EndpointName="e", Body=b"{}", ContentType="application/json",
            CustomAttributes="tenant=acme")
        assert response["CustomAttributes"] == "seen=acme"
        assert json.loads(response["Body"].read()) == {"ok": True}


def test_target_variant_is_reported_back(echo_server):
    response = runtime_client(echo_server).invoke_endpoint(
        EndpointName="e", Body=b"{}", ContentType="application/json", TargetVariant="blue")
    assert response["InvokedProductionVariant"] == "blue"


def test_handler_failure_is_sagemaker_model_error(tmp_path):
    from conftest import ServeProcess

    with ServeProcess(handler_dir(tmp_path, "faulty")) as server:
        client = runtime_client(server)
        with pytest.raises(client.exceptions.ModelError) as raised:
            client.invoke_endpoint(EndpointName="e", Body=json.dumps({"action": "raise"}),
                                   ContentType="application/json")
        error = raised.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert error["OriginalStatusCode"] == 424
        assert "the handler refused this input" in error["OriginalMessage"]
        # The same failure on the stream route, before the first byte: also a ModelError.
        with pytest.raises(client.exceptions.ModelError):
            client.invoke_endpoint_with_response_stream(
                EndpointName="e", Body=json.dumps({"action": "error"}),
                ContentType="application/json")


def test_bad_endpoint_name_is_validation_error(echo_server):
    response = requests.post(echo_server.url("/endpoints/-bad_name/invocations"), data=b"{}")
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"


def test_handler_stream_arrives_as_payload_parts_while_generated(tmp_path):
    from conftest import ServeProcess

    with ServeProcess(handler_dir(tmp_path, "streaming")) as server:
        client = runtime_client(server)
        started = time.monotonic()
        response = client.invoke_endpoint_with_response_stream(
            EndpointName="local", Body=json.dumps({"count": 5, "delay": 0.3}),
            ContentType="application/json", CustomAttributes="a=1", InferenceId="stream-1")
        assert response["ContentType"] == "application/jsonlines"
        assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == \
            "application/vnd.amazon.eventstream"
        arrivals, data = [], b""
        for event in response["Body"]:
            data += event["PayloadPart"]["Bytes"]
            arrivals.append(time.monotonic() - started)
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [line["token"] for line in lines] == [f"t{i}" for i in range(5)]
        # Streamed, not buffered: the first part came well before the last one.
        assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] > 0.9


def test_llm_stream_matches_the_non_streamed_text(tiny_llm):
    client = runtime_client(tiny_llm)
    request = {"inputs": "def main():", "parameters": {"max_new_tokens": 24, "ignore_eos": True}}
    whole = client.invoke_endpoint(EndpointName="tiny", Body=json.dumps(request),
                                   ContentType="application/json")
    expected = json.loads(whole["Body"].read())["generated_text"]
    assert whole["ResponseMetadata"]["HTTPHeaders"]["x-generated-tokens"] == "24"

    stream = client.invoke_endpoint_with_response_stream(
        EndpointName="tiny", Body=json.dumps({**request, "stream": True}),
        ContentType="application/json")
    assert stream["ContentType"] == "application/jsonlines"
    buffered = b"".join(e["PayloadPart"]["Bytes"] for e in stream["Body"])
    lines = [json.loads(line) for line in buffered.decode().splitlines()]
    assert len(lines) == 24
    assert "".join(line["token"]["text"] for line in lines) == expected
    assert lines[-1]["generated_text"] == expected


def test_llm_errors_become_model_error_with_the_original_status(tiny_llm):
    client = runtime_client(tiny_llm)
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint_with_response_stream(
            EndpointName="tiny", ContentType="application/json",
            Body=json.dumps({"inputs": "x", "parameters": {"temperature": -1}, "stream": True}))
    assert raised.value.response["OriginalStatusCode"] == 400
    assert "temperature" in raised.value.response["OriginalMessage"]


@pytest.mark.slow
def test_smollm2_chat_streams_through_boto3(serve_factory):
    model = default_model_dir()
    assert model is not None, "SmolLM2 is not built: run `make default-model` (make test does)"
    server = serve_factory(model).start()
    client = runtime_client(server)
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="smollm2", ContentType="application/json", Body=json.dumps({
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 30, "stream": True}))
    chunks = b"".join(e["PayloadPart"]["Bytes"] for e in response["Body"])
    text = "".join(json.loads(line)["choices"][0]["delta"].get("content", "")
                   for line in chunks.decode().splitlines() if json.loads(line)["choices"])
    assert "Paris" in text
