"""option.load_format=stream: safetensors read straight from a real moto_server, slice by slice."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s3_helpers import bucket, client, moto, s3_env, s3_proxy, upload_dir  # noqa: F401
from tiny_models import build_model

from container.engine.model_config import ModelConfig
from container.engine.models.llama import LlamaForCausalLM
from container.engine.parallel import TensorParallel
from container.engine.weights import LocalCheckpoint, load_weights
from container.errors import StartupError
from container.storage import s3_stream
from container.storage.s3_stream import S3StreamCheckpoint

INDEXES = [
    slice(None), slice(3, 9), slice(-4, None), slice(5, 5),
    (slice(None), slice(2, 7)), (slice(1, 4), slice(0, 3)), (slice(None), slice(6, 7)),
    2, -1, (3, slice(1, 5)), Ellipsis, (Ellipsis, slice(2, 4)), (slice(0, 2), Ellipsis),
]


@pytest.fixture
def env(monkeypatch, tmp_path, s3_proxy):
    for name, value in s3_env(s3_proxy.endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "downloads"))


@pytest.fixture
def tensors_file(tmp_path):
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "matrix_f32": torch.randn(12, 10, generator=generator),
        "matrix_bf16": torch.randn(12, 10, generator=generator).to(torch.bfloat16),
        "cube_f16": torch.randn(4, 12, 10, generator=generator).to(torch.float16),
        "vector_i64": torch.arange(12, dtype=torch.int64),
    }
    directory = tmp_path / "tensors"
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("merge_gap", [s3_stream.MERGE_GAP_BYTES, 0])
def test_slices_equal_safetensors_own(env, moto, bucket, tensors_file, monkeypatch, merge_gap):
    """Every index form the loaders use, row spans merged or one GET per row."""
    monkeypatch.setattr(s3_stream, "MERGE_GAP_BYTES", merge_gap)
    upload_dir(client(moto.endpoint), tensors_file, bucket, "t/")
    source = S3StreamCheckpoint(f"s3://{bucket}/t/")
    compared = 0
    with safe_open(str(tensors_file / "model.safetensors"), framework="pt") as local:
        for opened in source.open_files():
            with opened as remote:
                assert sorted(remote.keys()) == sorted(local.keys())
                for name in local.keys():
                    ours, theirs = remote.get_slice(name), local.get_slice(name)
                    assert ours.get_shape() == theirs.get_shape()
                    assert ours.get_dtype() == theirs.get_dtype()
                    for index in INDEXES:
                        try:
                            expected = theirs[index]
                        except Exception:      # noqa: BLE001 - not valid for this rank
                            continue
                        got = ours[index]
                        assert got.dtype == expected.dtype, (name, index)
                        assert torch.equal(got, expected), (name, index)
                        compared += 1
    assert compared > 30


def build(model_dir, rank: int, size: int) -> LlamaForCausalLM:
    config = ModelConfig.from_dir(model_dir)
    torch.set_default_dtype(torch.float32)
    return LlamaForCausalLM(config, 64, TensorParallel(rank, size))


@pytest.mark.parametrize("size", [1, 2])
def test_each_rank_streams_its_own_slices(env, moto, bucket, tmp_path, monkeypatch, s3_proxy,
                                          size):
    """Weights equal those read from the local files; each rank reads exactly its own bytes
    (with gap merging off) and the slices after layer 0 arrive by prefetch."""
    monkeypatch.setattr(s3_stream, "MERGE_GAP_BYTES", 0)
    model_dir = build_model(tmp_path / "tiny", "llama", num_hidden_layers=4)
    upload_dir(client(moto.endpoint), model_dir, bucket, "tiny/")
    total = (model_dir / "model.safetensors").stat().st_size
    for rank in range(size):
        s3_proxy.reset()
        expected = build(model_dir, rank, size)
        load_weights(expected, LocalCheckpoint(model_dir))
        streamed = build(model_dir, rank, size)
        source = S3StreamCheckpoint(f"s3://{bucket}/tiny/")
        load_weights(streamed, source)
        for (name, a), (_, b) in zip(expected.state_dict().items(),
                                     streamed.state_dict().items()):
            assert torch.equal(a, b), name
        param_bytes = sum(p.numel() * p.element_size() for p in streamed.parameters())
        assert source.slice_bytes == param_bytes
        assert source.wasted_bytes == 0
        assert source.prefetch_hits >= 3 * 9        # layers 1..3 of 9 tensors each
        fetched = s3_proxy.object_bytes[f"{bucket}/tiny/model.safetensors"]
        assert fetched == source.bytes_read
        if size > 1:
            assert fetched < 0.7 * total            # about half, plus norms and the header


def test_stream_needs_safetensors(env, moto, bucket, tmp_path):
    directory = tmp_path / "bin_only"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "pytorch_model.bin").write_bytes(b"x")
    upload_dir(client(moto.endpoint), directory, bucket, "b/")
    with pytest.raises(StartupError, match=r"no \*.safetensors under s3://.*/b/"):
        S3StreamCheckpoint(f"s3://{bucket}/b/")


def test_stream_survives_faults(env, moto, bucket, tmp_path, s3_proxy):
    model_dir = build_model(tmp_path / "tiny", "llama")
    upload_dir(client(moto.endpoint), model_dir, bucket, "f/")
    weights = f"{bucket}/f/model.safetensors"
    is_weights = lambda method, key: method == "GET" and key == weights   # noqa: E731
    s3_proxy.add_fault("503", 2, is_weights)
    s3_proxy.add_fault("drop", 2, is_weights)
    s3_proxy.add_fault("cut", 2, is_weights)
    streamed = build(model_dir, 0, 1)
    load_weights(streamed, S3StreamCheckpoint(f"s3://{bucket}/f/"))
    expected = build(model_dir, 0, 1)
    load_weights(expected, LocalCheckpoint(model_dir))
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(),
                                                 streamed.state_dict().values()))
    assert dict(s3_proxy.injected) == {"503": 2, "drop": 2, "cut": 2}
