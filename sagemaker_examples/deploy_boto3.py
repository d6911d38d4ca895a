"""Deploy a model directory to a SageMaker endpoint with plain boto3, call it, clean up.

    # on AWS: an image in ECR, an execution role, a bucket
    python sagemaker_examples/deploy_boto3.py --model-dir DIR --image ACCOUNT.dkr.ecr.REGION.amazonaws.com/serve:gpu \
        --role-arn arn:aws:iam::ACCOUNT:role/ROLE --bucket BUCKET [--instance-type ml.g5.2xlarge]
    # LOCAL: moto for S3 and the control plane, `serve` as the endpoint's container
    python sagemaker_examples/deploy_boto3.py --local --model-dir DIR

Steps: upload the directory (uncompressed, an S3 prefix: the container reads the files as they
are), create_model (image, model data, environment), create_endpoint_config (instance, timeouts
for the model download and the container's first healthy /ping, volume size), create_endpoint,
wait until InService, invoke_endpoint, invoke_endpoint_with_response_stream (event stream parsed
into text), then delete the endpoint, its config, the model and the uploaded files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_text import stream_text  # noqa: E402

DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
# Generous limits for LLMs: a large checkpoint downloads and loads slowly.
MODEL_DOWNLOAD_TIMEOUT_S = 1200
STARTUP_HEALTH_CHECK_TIMEOUT_S = 900
VOLUME_SIZE_GB = 128


@dataclass
class Deployment:
    endpoint_name: str
    config_name: str
    model_name: str
    model_data: str | None          # s3://bucket/prefix/, or None (HF_MODEL_ID in the env)


def upload_model_dir(s3, model_dir: str | Path, bucket: str, prefix: str) -> str:
    """Upload every file of `model_dir` under s3://bucket/prefix/; returns that prefix URI."""
    model_dir = Path(model_dir)
    prefix = prefix.strip("/")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"{model_dir}: no files to upload")
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(model_dir).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


def create_endpoint(sagemaker, name: str, image: str, model_data: str | None, role_arn: str,
                    environment: dict[str, str], instance_type: str = DEFAULT_INSTANCE_TYPE,
                    instance_count: int = 1) -> Deployment:
    deployment = Deployment(name, f"{name}-config", f"{name}-model", model_data)
    container = {"Image": image, "Environment": environment}
    if model_data:
        container["ModelDataSource"] = {"S3DataSource": {
            "S3Uri": model_data, "S3DataType": "S3Prefix", "CompressionType": "None"}}
    sagemaker.create_model(ModelName=deployment.model_name, ExecutionRoleArn=role_arn,
                           PrimaryContainer=container)
    sagemaker.create_endpoint_config(
        EndpointConfigName=deployment.config_name,
        ProductionVariants=[{
            "VariantName": "AllTraffic",
            "ModelName": deployment.model_name,
            "InstanceType": instance_type,
            "InitialInstanceCount": instance_count,
            "ModelDataDownloadTimeoutInSeconds": MODEL_DOWNLOAD_TIMEOUT_S,
            "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
            "VolumeSizeInGB": VOLUME_SIZE_GB,
        }])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=deployment.config_name)
    return deployment


def wait_in_service(sagemaker, name: str, poll_s: int = 30, max_wait_s: int = 3600) -> dict:
    waiter = sagemaker.get_waiter("endpoint_in_service")
    waiter.wait(EndpointName=name, WaiterConfig={"Delay": poll_s,
                                                 "MaxAttempts": max(1, max_wait_s // poll_s)})
    return sagemaker.describe_endpoint(EndpointName=name)


def invoke(runtime, name: str, payload: dict, **extra) -> dict:
    response = runtime.invoke_endpoint(EndpointName=name, Body=json.dumps(payload),
                                       ContentType="application/json",
                                       Accept="application/json", **extra)
    return json.loads(response["Body"].read())


def invoke_stream(runtime, name: str, payload: dict, echo: bool = False, **extra) -> str:
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=json.dumps({**payload, "stream": True}),
        ContentType="application/json", **extra)
    return stream_text(response, echo=echo)


def cleanup(sagemaker, s3, deployment: Deployment) -> None:
    """Delete what `create_endpoint` and `upload_model_dir` made (each step even if one fails)."""
    steps = [
        lambda: sagemaker.delete_endpoint(EndpointName=deployment.endpoint_name),
        lambda: sagemaker.delete_endpoint_config(EndpointConfigName=deployment.config_name),
        lambda: sagemaker.delete_model(ModelName=deployment.model_name),
    ]
    if deployment.model_data:
        steps.append(lambda: _delete_prefix(s3, deployment.model_data))
    for step in steps:
        try:
            step()
        except Exception as exc:        # keep going: leave as little behind as possible
            print(f"cleanup: {exc}", file=sys.stderr)


def _delete_prefix(s3, uri: str) -> None:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def run(args, sagemaker, s3, runtime_for, on_created=None) -> dict:
    """The whole example; `runtime_for(name)` gives the sagemaker-runtime client to call."""
    name = args.endpoint_name or f"serve-example-{int(time.time())}"
    model_data = upload_model_dir(s3, args.model_dir, args.bucket, f"models/{name}")
    print(f"uploaded {args.model_dir} to {model_data}")
    deployment = create_endpoint(sagemaker, name, args.image, model_data, args.role_arn,
                                 parse_env(args.env), args.instance_type)
    try:
        status = wait_in_service(sagemaker, name, poll_s=args.poll_seconds)["EndpointStatus"]
        print(f"endpoint {name}: {status}")
        if on_created:
            on_created(name)
        runtime = runtime_for(name)
        payload = json.loads(args.payload)
        answer = invoke(runtime, name, payload)
        print("invoke_endpoint:", json.dumps(answer)[:500])
        print("invoke_endpoint_with_response_stream: ", end="")
        streamed = invoke_stream(runtime, name, payload, echo=True)
        return {"endpoint": name, "answer": answer, "streamed": streamed}
    finally:
        if not args.keep:
            cleanup(sagemaker, s3, deployment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true",
                        help="moto for S3 + SageMaker, `serve` as the endpoint (no AWS account)")
    parser.add_argument("--model-dir", required=True, help="directory to upload and serve")
    parser.add_argument("--image", default="serve:gpu", help="the container image URI (ECR)")
    parser.add_argument("--role-arn", help="SageMaker execution role ARN")
    parser.add_argument("--bucket", help="S3 bucket for the model files")
    parser.add_argument("--instance-type", default=None)
    parser.add_argument("--endpoint-name")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="container environment, e.g. OPTION_MAX_ROLLING_BATCH_SIZE=32")
    parser.add_argument("--payload", default=json.dumps({
        "inputs": "The capital of France is", "parameters": {"max_new_tokens": 32}}))
    parser.add_argument("--poll-seconds", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="do not delete what was created")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.local:
        from local_aws import LOCAL_INSTANCE_TYPE, LOCAL_ROLE_ARN, LocalAws

        with LocalAws() as local:
            args.bucket = args.bucket or "local-models"
            args.role_arn = args.role_arn or LOCAL_ROLE_ARN
            args.instance_type = args.instance_type or LOCAL_INSTANCE_TYPE
            args.poll_seconds = 1
            s3 = local.client("s3")
            s3.create_bucket(Bucket=args.bucket)
            return run(args, local.client("sagemaker"), s3, local.runtime_client,
                       on_created=local.host_endpoint)
    if not (args.role_arn and args.bucket):
        raise SystemExit("--role-arn and --bucket are needed on AWS (or pass --local)")
    args.instance_type = args.instance_type or DEFAULT_INSTANCE_TYPE
    session = boto3.Session()
    return run(args, session.client("sagemaker"), session.client("s3"),
               lambda _name: session.client("sagemaker-runtime"))


if __name__ == "__main__":
    main()
