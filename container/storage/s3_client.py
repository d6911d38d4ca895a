"""s3:// URLs, the boto3 client we use for them, and S3 failures as one start-up line.

Endpoint, region and credentials come from boto3's standard chain (AWS_ENDPOINT_URL,
AWS_REGION, AWS_PROFILE, ~/.aws, container and instance roles). botocore's "standard" retry mode
retries 5xx answers, throttling and dropped connections with capped exponential backoff and
jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                 NoCredentialsError, PartialCredentialsError)

from ..errors import StartupError

MAX_ATTEMPTS = 8        # per request, first try included


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str            # object key, or prefix (without the trailing slash) of a directory

    @property
    def is_archive(self) -> bool:
        return self.key.endswith((".tar.gz", ".tgz"))

    @property
    def prefix(self) -> str:
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Url:
    rest = url[len("s3://"):] if url.startswith("s3://") else ""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StartupError(f"option.model_id={url} is not an S3 URL: write s3://bucket/prefix/")
    return S3Url(bucket, key)


def make_client(concurrency: int = 16):
    """One client shared by all threads (botocore clients are thread-safe)."""
    config = Config(retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    max_pool_connections=concurrency + 4, connect_timeout=10, read_timeout=60,
                    tcp_keepalive=True)
    try:
        return boto3.session.Session().client("s3", config=config)
    except BotoCoreError as exc:
        raise StartupError(f"cannot create an S3 client: {exc}: check AWS_REGION, AWS_PROFILE "
                           "and AWS_ENDPOINT_URL") from None


_CAUSES = {
    "NoSuchBucket": "the bucket does not exist: check the bucket name (and AWS_ENDPOINT_URL)",
    "NoSuchKey": "no such object: check the key",
    "404": "no such object: check the key",
    "AccessDenied": "access denied: the credentials in use need s3:ListBucket and s3:GetObject "
                    "on it",
    "403": "access denied: the credentials in use need s3:ListBucket and s3:GetObject on it",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "InvalidAccessKeyId": "the AWS access key id is not known to S3: check AWS_ACCESS_KEY_ID or "
                          "the profile in use",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key id: check "
                             "AWS_SECRET_ACCESS_KEY",
    "ExpiredToken": "the AWS session token has expired: refresh the credentials",
    "InvalidToken": "the AWS session token is not valid: check AWS_SESSION_TOKEN",
    "PermanentRedirect": "the bucket is in another region: set AWS_REGION to the bucket's region",
    "PreconditionFailed": "the object changed during the download: retry once it is stable",
    "AuthorizationHeaderMalformed": "the bucket is in another region: set AWS_REGION to the "
                                    "bucket's region",
}


# failures that fetching again would only repeat
PERMANENT_CODES = frozenset(_CAUSES) - {"PreconditionFailed"}


def describe_failure(url, exc: Exception) -> StartupError:
    """One line naming the URL and the cause."""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        cause = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                 "AWS_PROFILE, or run with an instance or execution role")
    elif isinstance(exc, EndpointConnectionError):
        cause = f"cannot reach the S3 endpoint ({exc}): check AWS_ENDPOINT_URL and the network"
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return describe_code(url, str(error.get("Code", "?")), str(error.get("Message", "")))
    else:
        cause = f"{type(exc).__name__}: {exc}"
    return StartupError(f"option.model_id={url}: {cause}")


def describe_code(url, code: str, message: str) -> StartupError:
    cause = _CAUSES.get(code) or f"S3 answered {code}: {message}".strip()
    return StartupError(f"option.model_id={url}: {cause}")
