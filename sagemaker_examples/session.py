"""One object for the notebooks: where to deploy (AWS or LOCAL) and the steps they share.

    session = ExampleSession.open(local=True)            # or local=False with image/role/bucket
    endpoint = session.deploy("my-llm", model_dir=DIR, environment={...})
    runtime = session.runtime(endpoint)                  # boto3 sagemaker-runtime client
    ...
    session.delete(endpoint); session.close()

The calls themselves are deploy_boto3's (plain boto3); LOCAL adds moto and a `serve` process
(local_aws.LocalAws) behind the same calls.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from deploy_boto3 import (DEFAULT_INSTANCE_TYPE, Deployment, cleanup, create_endpoint,
                          upload_model_dir, wait_in_service)
from local_aws import LOCAL_INSTANCE_TYPE, LOCAL_ROLE_ARN, LocalAws

LOCAL_BUCKET = "local-models"


def local_mode_default() -> bool:
    """LOCAL unless SERVE_EXAMPLES_LOCAL=0: nothing is created in an AWS account by accident."""
    return os.environ.get("SERVE_EXAMPLES_LOCAL", "1").strip().lower() not in ("0", "false", "no")


def default_model_dir() -> Path:
    """The SmolLM2 checkpoint `make default-model` converts (LOCAL mode serves it)."""
    path = Path(os.environ.get("SERVE_DEFAULT_MODEL",
                               Path.home() / ".cache/serve/models/SmolLM2-135M-Instruct"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run `make default-model` first")
    return path


@dataclass
class ExampleSession:
    local: bool
    image: str
    role_arn: str
    bucket: str
    instance_type: str
    sagemaker: object
    s3: object
    boto: boto3.Session | None = None
    local_aws: LocalAws | None = None
    deployments: dict = field(default_factory=dict)

    @classmethod
    def open(cls, local: bool, image: str | None = None, role_arn: str | None = None,
             bucket: str | None = None, instance_type: str | None = None) -> "ExampleSession":
        if local:
            aws = LocalAws().start()
            s3 = aws.client("s3")
            s3.create_bucket(Bucket=bucket or LOCAL_BUCKET)
            return cls(True, image or "serve:cpu", role_arn or LOCAL_ROLE_ARN,
                       bucket or LOCAL_BUCKET, LOCAL_INSTANCE_TYPE, aws.client("sagemaker"), s3,
                       local_aws=aws)
        if not (image and role_arn and bucket):
            raise ValueError("on AWS, give image (an ECR URI), role_arn and bucket")
        boto = boto3.Session()
        return cls(False, image, role_arn, bucket, instance_type or DEFAULT_INSTANCE_TYPE,
                   boto.client("sagemaker"), boto.client("s3"), boto=boto)

    def deploy(self, name: str, model_dir: str | Path | None = None,
               environment: dict | None = None, instance_type: str | None = None) -> str:
        """Upload (if a directory is given), create model + config + endpoint, wait InService."""
        name = f"{name}-{int(time.time())}"
        model_data = (upload_model_dir(self.s3, model_dir, self.bucket, f"models/{name}")
                      if model_dir else None)
        # LOCAL always runs on this CPU machine, whatever instance a notebook asks for on AWS.
        instance = self.instance_type if self.local else (instance_type or self.instance_type)
        deployment = create_endpoint(self.sagemaker, name, self.image, model_data,
                                     self.role_arn, environment or {}, instance)
        self.deployments[name] = deployment
        wait_in_service(self.sagemaker, name, poll_s=1 if self.local else 30)
        if self.local:
            self.local_aws.host_endpoint(name)
        return name

    def runtime(self, endpoint_name: str):
        if self.local:
            return self.local_aws.runtime_client(endpoint_name)
        return self.boto.client("sagemaker-runtime")

    def local_url(self, endpoint_name: str) -> str:
        """LOCAL only: the hosted container's own URL (for its /models, /ping...)."""
        return self.local_aws.endpoints[endpoint_name].url

    def delete(self, endpoint_name: str) -> None:
        deployment: Deployment = self.deployments.pop(endpoint_name)
        if self.local:
            self.local_aws.stop_endpoint(endpoint_name)
        cleanup(self.sagemaker, self.s3, deployment)

    def close(self) -> None:
        for name in list(self.deployments):
            self.delete(name)
        if self.local_aws:
            self.local_aws.stop()
