"""The boto3 example's deployment, through the sagemaker Python SDK (v3: sagemaker.core).

    pip install -e '.[sagemaker]'     # the SDK is an optional extra (about 1 GB)
    python sagemaker_examples/deploy_sdk.py --model-dir DIR --image IMAGE_URI --role-arn ARN --bucket B
    python sagemaker_examples/deploy_sdk.py --local --model-dir DIR

The SDK's resource classes (Model, EndpointConfig, Endpoint) make the same control-plane calls;
`Endpoint.invoke` / `invoke_with_response_stream` call the runtime. In LOCAL mode every client
the SDK makes reaches moto and `serve` through AWS_ENDPOINT_URL_* (set by LocalAws), and the
SDK's own local-mode runtime client, `LocalSagemakerRuntimeClient`, calls the same `serve` on
its /invocations route.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_boto3 import (DEFAULT_INSTANCE_TYPE, MODEL_DOWNLOAD_TIMEOUT_S,  # noqa: E402
                          STARTUP_HEALTH_CHECK_TIMEOUT_S, VOLUME_SIZE_GB, parse_env,
                          upload_model_dir)
from stream_text import token_texts  # noqa: E402


def deploy(name: str, image: str, model_data: str, role_arn: str, environment: dict,
           instance_type: str, session: boto3.Session, poll_s: int = 30):
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import (ContainerDefinition, ModelDataSource,
                                       ProductionVariant, S3ModelDataSource)

    region = session.region_name
    model = Model.create(
        model_name=f"{name}-model", execution_role_arn=role_arn, session=session, region=region,
        primary_container=ContainerDefinition(
            image=image, environment=environment,
            model_data_source=ModelDataSource(s3_data_source=S3ModelDataSource(
                s3_uri=model_data, s3_data_type="S3Prefix", compression_type="None"))))
    config = EndpointConfig.create(
        endpoint_config_name=f"{name}-config", session=session, region=region,
        production_variants=[ProductionVariant(
            variant_name="AllTraffic", model_name=model.model_name, instance_type=instance_type,
            initial_instance_count=1,
            model_data_download_timeout_in_seconds=MODEL_DOWNLOAD_TIMEOUT_S,
            container_startup_health_check_timeout_in_seconds=STARTUP_HEALTH_CHECK_TIMEOUT_S,
            volume_size_in_gb=VOLUME_SIZE_GB)])
    endpoint = Endpoint.create(endpoint_name=name, endpoint_config_name=config.endpoint_config_name,
                               session=session, region=region)
    endpoint.wait_for_status("InService", poll=poll_s)
    return model, config, endpoint


def invoke(endpoint, payload: dict) -> dict:
    response = endpoint.invoke(body=json.dumps(payload), content_type="application/json",
                               accept="application/json")
    body = response.body
    return json.loads(body.read() if hasattr(body, "read") else body)


def invoke_stream(endpoint, payload: dict, session: boto3.Session) -> str:
    body = json.dumps({**payload, "stream": True})
    try:
        response = endpoint.invoke_with_response_stream(body=body,
                                                        content_type="application/json")
        events = _events(response.body)
    except AttributeError:
        # sagemaker 3.x's Endpoint.invoke_with_response_stream fails to convert botocore's
        # event stream ("'EventStream' object has no attribute 'get'") after the call: make
        # the same call with the session's runtime client.
        response = session.client("sagemaker-runtime").invoke_endpoint_with_response_stream(
            EndpointName=endpoint.endpoint_name, Body=body, ContentType="application/json")
        events = response["Body"]
    return "".join(token_texts(events))


def _events(body):
    """The SDK hands back botocore's event stream (dicts) or its own shapes: accept both."""
    for event in body:
        if isinstance(event, dict):
            yield event
        else:
            yield {"PayloadPart": {"Bytes": event.payload_part.bytes}}


def invoke_with_sdk_local_client(port: int, payload: dict) -> dict:
    """The SDK's local-mode runtime client (`local.serving_port` picks the port).

    It runs `docker context inspect` first to find the docker host: with no `docker` command at
    all that raises FileNotFoundError, so put a `docker` that prints an error and exits 1 first
    on PATH (it then uses localhost).
    """
    from sagemaker.core.local.local_session import LocalSagemakerRuntimeClient

    client = LocalSagemakerRuntimeClient(config={"local": {"serving_port": port}})
    response = client.invoke_endpoint(Body=json.dumps(payload), EndpointName="local",
                                      ContentType="application/json", Accept="application/json")
    return json.loads(response["Body"].read())


def cleanup(model, config, endpoint, s3, model_data: str) -> None:
    from deploy_boto3 import _delete_prefix

    for step in (endpoint.delete, config.delete, model.delete,
                 lambda: _delete_prefix(s3, model_data)):
        try:
            step()
        except Exception as exc:        # keep going: leave as little behind as possible
            print(f"cleanup: {exc}", file=sys.stderr)


def run(args, session: boto3.Session, on_created=None) -> dict:
    name = args.endpoint_name or f"serve-sdk-{int(time.time())}"
    s3 = session.client("s3")
    model_data = upload_model_dir(s3, args.model_dir, args.bucket, f"models/{name}")
    model, config, endpoint = deploy(name, args.image, model_data, args.role_arn,
                                     parse_env(args.env), args.instance_type, session,
                                     poll_s=args.poll_seconds)
    try:
        print(f"endpoint {name}: {endpoint.endpoint_status}")
        result = {"endpoint": name}
        if on_created:
            result.update(on_created(name) or {})
        payload = json.loads(args.payload)
        result["answer"] = invoke(endpoint, payload)
        print("Endpoint.invoke:", json.dumps(result["answer"])[:500])
        result["streamed"] = invoke_stream(endpoint, payload, session)
        print("Endpoint.invoke_with_response_stream:", result["streamed"][:500])
        return result
    finally:
        if not args.keep:
            cleanup(model, config, endpoint, s3, model_data)


def main(argv: list[str] | None = None) -> dict:
    from deploy_boto3 import build_parser

    args = build_parser().parse_args(argv)
    if not args.local:
        if not (args.role_arn and args.bucket):
            raise SystemExit("--role-arn and --bucket are needed on AWS (or pass --local)")
        args.instance_type = args.instance_type or DEFAULT_INSTANCE_TYPE
        return run(args, boto3.Session())

    from local_aws import LOCAL_INSTANCE_TYPE, LOCAL_ROLE_ARN, LocalAws

    with LocalAws() as local:
        args.bucket = args.bucket or "local-models"
        args.role_arn = args.role_arn or LOCAL_ROLE_ARN
        args.instance_type = args.instance_type or LOCAL_INSTANCE_TYPE
        args.poll_seconds = 1
        local.client("s3").create_bucket(Bucket=args.bucket)
        session = local.sdk_session()

        def host(name: str) -> dict:
            hosted = local.host_endpoint(name)
            return {"local_client": invoke_with_sdk_local_client(hosted.port,
                                                                 json.loads(args.payload))}

        return run(args, session, on_created=host)


if __name__ == "__main__":
    main()
