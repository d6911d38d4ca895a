"""S3 model download (filled in by the S3 issue)."""

from __future__ import annotations

from ..errors import StartupError


def fetch_model(url, config):
    raise StartupError(f"option.model_id={url}: s3:// models are not available yet")
