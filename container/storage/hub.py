"""Hugging Face Hub model ids (filled in by the Hub issue)."""

from __future__ import annotations

from ..errors import StartupError


def fetch_hub_model(model_id, config):
    raise StartupError(f"option.model_id={model_id} is neither a local directory nor s3://; "
                       "Hugging Face Hub ids are not available yet: download the model and point "
                       "option.model_id at its directory")
