"""DJL's management API through `serve`: models registered at run time (local and s3://), each
with its own worker group, routed by /predictions/{name} and SageMaker's target-model header."""

from __future__ import annotations

import json

import pytest
import requests

from conftest import ServeProcess, handler_dir, write_model
from s3_helpers import bucket, client, moto, s3_env, upload_dir  # noqa: F401

TAGGED = '''
from djl_python import Input, Output

TAG = {tag!r}


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return Output().add_as_json({{"model": TAG, "got": inputs.get_as_string()}})
'''

BROKEN = '''
def handle(inputs):
    raise RuntimeError("this model cannot load")
'''


def tagged_model(directory, tag: str):
    return write_model(directory, TAGGED.format(tag=tag))


@pytest.fixture(scope="module")
def server(tmp_path_factory, moto):  # noqa: F811
    root = tmp_path_factory.mktemp("mm")
    default = tagged_model(root / "main", "main")
    served = ServeProcess(default, env=s3_env(moto.endpoint,
                                              SERVING_DOWNLOAD_DIR=str(root / "downloads")))
    served.start()
    yield served, root
    served.stop()


def ask(server, path: str, body: str = "hi", headers=None):
    return requests.post(server.url(path), data=body.encode(), headers=headers, timeout=60)


def test_register_route_describe_scale_and_unregister(server):
    server, root = server
    second = tagged_model(root / "second", "second")
    registered = requests.post(server.url(f"/models?url={second}&model_name=m2"), timeout=120)
    assert registered.status_code == 200, registered.text
    assert registered.json() == {"status": 'Model "m2" registered.'}

    assert ask(server, "/predictions/m2").json() == {"model": "second", "got": "hi"}
    assert ask(server, "/invocations").json()["model"] == "main"
    target = ask(server, "/invocations",
                 headers={"X-Amzn-SageMaker-Target-Model": "m2.tar.gz"}).json()
    assert target["model"] == "second"
    default_name = server.model_name()
    assert ask(server, f"/predictions/{default_name}").json()["model"] == "main"
    import boto3                                    # a multi-model endpoint, as boto3 calls it

    runtime = boto3.client("sagemaker-runtime", endpoint_url=server.base, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
    answer = runtime.invoke_endpoint(EndpointName="mme", TargetModel="m2.tar.gz", Body=b"hi")
    assert json.loads(answer["Body"].read()) == {"model": "second", "got": "hi"}
    with pytest.raises(runtime.exceptions.ModelError) as missing:
        runtime.invoke_endpoint(EndpointName="mme", TargetModel="nope.tar.gz", Body=b"hi")
    assert missing.value.response["OriginalStatusCode"] == 404

    names = [m["modelName"] for m in requests.get(server.url("/models"), timeout=30)
             .json()["models"]]
    assert names == [default_name, "m2"]
    page = requests.get(server.url("/models?limit=1"), timeout=30).json()
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    described = requests.get(server.url("/models/m2"), timeout=30).json()[0]
    assert described["modelUrl"] == str(second) and described["status"] == "Healthy"
    assert described["engineKind"] == "handler" and described["default"] is False

    assert requests.put(server.url("/models/m2?min_worker=1&max_worker=4"),
                        timeout=30).status_code == 200
    assert requests.get(server.url("/models/m2"), timeout=30).json()[0]["maxWorkers"] == 4
    refused = requests.put(server.url("/models/m2?min_worker=3"), timeout=30)
    assert refused.status_code == 400 and refused.json()["type"] == "InvalidWorkers"

    duplicate = requests.post(server.url(f"/models?url={second}&model_name=m2"), timeout=60)
    assert duplicate.status_code == 409
    removed = requests.delete(server.url("/models/m2"), timeout=60)
    assert removed.status_code == 200 and removed.json() == {"status": 'Model "m2" unregistered'}
    for response in (ask(server, "/predictions/m2"),
                     ask(server, "/invocations", headers={"X-Amzn-SageMaker-Target-Model": "m2"}),
                     requests.delete(server.url("/models/m2"), timeout=30),
                     requests.get(server.url("/models/m2"), timeout=30)):
        assert response.status_code == 404, response.text
        assert response.json()["type"] == "ModelNotFound"
    assert ask(server, "/invocations").json()["model"] == "main"


def test_registration_errors_leave_the_server_serving(server):
    server, root = server
    cases = [("", 400, "InvalidModel"),
             (f"url={root / 'missing'}&model_name=x1", 400, "InvalidModel"),
             (f"url={root / 'main'}&model_name=bad/name", 400, "InvalidModel"),
             (f"url={root / 'main'}&model_name={server.model_name()}", 409, "ModelExists")]
    for query, status, type_ in cases:
        response = requests.post(server.url(f"/models?{query}"), timeout=60)
        assert response.status_code == status, (query, response.text)
        assert response.json()["type"] == type_
    broken = write_model(root / "broken", BROKEN)
    failed = requests.post(server.url(f"/models?url={broken}&model_name=broken"), timeout=120)
    assert failed.status_code == 500 and failed.json()["type"] == "ModelLoadFailed"
    assert "cannot load" in failed.json()["message"]
    assert "broken" not in [m["modelName"] for m in requests.get(
        server.url("/models"), timeout=30).json()["models"]]
    default = requests.delete(server.url(f"/models/{server.model_name()}"), timeout=30)
    assert default.status_code == 400
    assert ask(server, "/invocations").json()["model"] == "main"


def test_register_from_an_s3_tarball(server, moto, bucket, tmp_path):  # noqa: F811
    import tarfile

    server, _ = server
    source = tagged_model(tmp_path / "packed", "from-s3")
    archive = tmp_path / "packed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "model.py", arcname="model.py")
    client(moto.endpoint).upload_file(str(archive), bucket, "mme/packed.tar.gz")
    url = f"s3://{bucket}/mme/packed.tar.gz"
    registered = requests.post(server.url(f"/models?url={url}"), timeout=120)
    assert registered.status_code == 200, registered.text
    assert ask(server, "/predictions/packed").json() == {"model": "from-s3", "got": "hi"}
    assert requests.delete(server.url("/models/packed"), timeout=60).status_code == 200
