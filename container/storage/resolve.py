"""Where option.model_id points: a local directory, s3://, or a Hugging Face Hub id.

resolve_model_dir gives the local directory with config and tokenizer (downloading what is
remote); weights_source gives where the engine reads tensors from: that directory, or a stream
straight from S3 when option.load_format=stream.
"""

from __future__ import annotations

from pathlib import Path

from ..config.loader import ServingConfig
from ..errors import StartupError


def _streaming(config: ServingConfig) -> bool:
    return (config.option("load_format") or "auto") == "stream"


def resolve_model_dir(config: ServingConfig) -> Path:
    """The local directory holding the checkpoint (downloading it first when it is remote)."""
    model_id = config.option("model_id")
    if _streaming(config) and not (model_id or "").startswith("s3://"):
        raise StartupError(
            f"option.load_format=stream streams s3:// checkpoints, but option.model_id is "
            f"{model_id or 'not set'}: remove option.load_format (local safetensors are "
            "already read lazily) or point option.model_id at s3://bucket/prefix/")
    if not model_id:
        return Path(config.model_dir)
    if model_id.startswith("s3://"):
        from .s3 import fetch_model

        return fetch_model(model_id, config)
    path = Path(model_id).expanduser()
    if not path.is_absolute():
        candidate = Path(config.model_dir) / path
        if candidate.exists():
            path = candidate
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise StartupError(f"option.model_id={model_id} is a file; point it at the checkpoint's "
                           "directory")
    if model_id.startswith(("/", ".", "~")):
        raise StartupError(f"option.model_id={model_id}: no such directory")
    from .hub import fetch_hub_model

    return fetch_hub_model(model_id, config)


def weights_source(config: ServingConfig, model_dir: Path):
    """The checkpoint the engine loads tensors from (see engine/weights.py CheckpointSource)."""
    if _streaming(config):
        from .s3_stream import S3StreamCheckpoint

        return S3StreamCheckpoint(config.option("model_id"))
    from ..engine.weights import LocalCheckpoint

    return LocalCheckpoint(model_dir)
