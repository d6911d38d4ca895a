"""`serve` with option.model_id=s3://... against a real moto_server, end to end over HTTP."""

from __future__ import annotations

import io
import tarfile

import boto3
import pytest

from conftest import error_line, run_serve_to_exit
from s3_helpers import (MotoServer, S3Proxy, bucket, client, moto, s3_env,  # noqa: F401
                        s3_proxy, upload_dir)
from serve_helpers import generate, local_tokens, model_dir_with, tiny  # noqa: F401

pytestmark = pytest.mark.slow


def test_s3_prefix_serves_the_same_tokens(tiny, local_tokens, moto, bucket, tmp_path,
                                          serve_factory):
    upload_dir(client(moto.endpoint), tiny, bucket, "tiny/")
    model_dir = model_dir_with(tmp_path, f"option.model_id=s3://{bucket}/tiny/\n")
    server = serve_factory(model_dir, env=s3_env(
        moto.endpoint, SERVING_DOWNLOAD_DIR=str(tmp_path / "dl"))).start()
    assert generate(server) == local_tokens
    assert (tmp_path / "dl" / "s3" / bucket / "tiny" / "model.safetensors").is_file()


def test_model_tar_gz_from_hf_model_id_serves_the_same_tokens(tiny, local_tokens, moto, bucket,
                                                              tmp_path, serve_factory):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(tiny.iterdir()):
            tar.add(path, arcname=path.name)
    client(moto.endpoint).put_object(Bucket=bucket, Key="out/model.tar.gz",
                                     Body=buffer.getvalue())
    model_dir = model_dir_with(tmp_path, "")
    server = serve_factory(model_dir, env=s3_env(
        moto.endpoint, HF_MODEL_ID=f"s3://{bucket}/out/model.tar.gz",
        SERVING_DOWNLOAD_DIR=str(tmp_path / "dl"))).start()
    assert generate(server) == local_tokens


def test_streamed_weights_serve_the_same_tokens_without_a_local_copy(
        tiny, local_tokens, moto, bucket, tmp_path, serve_factory):
    upload_dir(client(moto.endpoint), tiny, bucket, "tiny/")
    model_dir = model_dir_with(tmp_path, f"option.model_id=s3://{bucket}/tiny/\n"
                                         "option.load_format=stream\n")
    server = serve_factory(model_dir, env=s3_env(
        moto.endpoint, SERVING_DOWNLOAD_DIR=str(tmp_path / "dl"))).start()
    assert generate(server) == local_tokens
    local = tmp_path / "dl" / "s3" / bucket / "tiny"
    assert (local / "tokenizer.json").is_file()
    assert not list((tmp_path / "dl").rglob("*.safetensors*"))


TP_UNSUPPORTED = ("tensor_parallel", "tensor parallel")


@pytest.mark.parametrize("load_format", ["auto", "stream"])
def test_tp2_downloads_once_per_host_and_serves_the_same_tokens(
        tiny, local_tokens, moto, bucket, tmp_path, serve_factory, load_format):
    """Two ranks on one host: the checkpoint is fetched once (auto), or each rank streams only
    its own slices (stream). Skipped only while serve refuses TP=2 for the native engine."""
    sizes = upload_dir(client(moto.endpoint), tiny, bucket, "tp/")
    proxy = S3Proxy(moto.port)
    try:
        model_dir = model_dir_with(tmp_path, f"option.model_id=s3://{bucket}/tp/\n"
                                             "option.tensor_parallel_degree=2\n"
                                             f"option.load_format={load_format}\n")
        env = s3_env(proxy.endpoint, SERVING_DOWNLOAD_DIR=str(tmp_path / "dl"))
        server = serve_factory(model_dir, env=env).start(wait=False)
        try:
            server.wait_healthy(180)
        except AssertionError:
            if server.process.poll() is not None and any(
                    s in server.log for s in TP_UNSUPPORTED) and "serve: error:" in server.log:
                pytest.skip("serve does not run option.tensor_parallel_degree=2 with the native "
                            "engine yet: " + server.log.strip().splitlines()[-1])
            raise
        assert generate(server) == local_tokens
        fetched = {k: n for k, n in proxy.object_bytes.items() if k.startswith(bucket)}
        weights = f"{bucket}/tp/model.safetensors"
        if load_format == "auto":
            assert fetched == {f"{bucket}/{k}": n for k, n in sizes.items()}
        else:
            total = sizes["tp/model.safetensors"]
            assert total < fetched[weights] < 1.6 * total     # two ranks, mostly own slices
            assert set(fetched) - {weights} <= {f"{bucket}/{k}" for k in sizes}
    finally:
        proxy.stop()


# -- one line for each failure --------------------------------------------------------------------

def failing_start(tmp_path, model_id: str, env: dict, extra: str = ""):
    model_dir = model_dir_with(tmp_path, f"option.model_id={model_id}\n{extra}")
    code, _, stderr = run_serve_to_exit(model_dir, env=dict(
        env, SERVING_DOWNLOAD_DIR=str(tmp_path / "dl")))
    return code, error_line(stderr)


@pytest.mark.parametrize("what, url, cause", [
    ("wrong bucket", "s3://no-such-bucket-anywhere/m/", "the bucket does not exist"),
    ("missing prefix", "s3://{bucket}/nothing-here/", "no objects under s3://{bucket}/nothing-here/"),
    ("missing tarball", "s3://{bucket}/none/model.tar.gz", "no such object"),
])
def test_missing_things_stop_start_up_with_one_line(moto, bucket, tmp_path, what, url, cause):
    url, cause = url.format(bucket=bucket), cause.format(bucket=bucket)
    code, line = failing_start(tmp_path, url, s3_env(moto.endpoint))
    assert code != 0
    assert f"option.model_id={url}" in line and cause in line, (what, line)


def test_no_credentials_stop_start_up_with_one_line(moto, bucket, tmp_path):
    env = s3_env(moto.endpoint)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    code, line = failing_start(tmp_path, f"s3://{bucket}/m/", env)
    assert code != 0
    assert f"s3://{bucket}/m/" in line and "no AWS credentials found" in line


def test_stream_of_a_tarball_is_refused(moto, bucket, tmp_path):
    client(moto.endpoint).put_object(Bucket=bucket, Key="model.tar.gz", Body=b"x")
    code, line = failing_start(tmp_path, f"s3://{bucket}/model.tar.gz", s3_env(moto.endpoint),
                               "option.load_format=stream\n")
    assert code != 0 and "not a tarball" in line


def test_denied_and_unknown_credentials_stop_start_up_with_one_line(tmp_path):
    """moto with authorization on (after its first few set-up calls): a user with no policy is
    denied; a made-up key id and a wrong secret are refused."""
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "5"})   # readiness probe + 4 set-up
    try:
        s3 = client(server.endpoint)
        s3.create_bucket(Bucket="locked")
        s3.put_object(Bucket="locked", Key="m/config.json", Body=b"{}")
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        cases = [
            (key["AccessKeyId"], key["SecretAccessKey"], "access denied"),
            ("AKIAUNKNOWNKEY000000", "whatever", "access key id is not known"),
            (key["AccessKeyId"], "wrong-secret", "secret key does not match"),
        ]
        for key_id, secret, cause in cases:
            env = s3_env(server.endpoint, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
            code, line = failing_start(tmp_path / key_id[-6:] / secret[:5], "s3://locked/m/", env)
            assert code != 0
            assert "option.model_id=s3://locked/m/" in line and cause in line, line
    finally:
        server.stop()
