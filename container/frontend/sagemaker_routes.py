"""SageMaker runtime routes for a local endpoint (filled in by the container/examples work)."""

from __future__ import annotations


def register_sagemaker_routes(app, invoke) -> None:
    """Add /endpoints/<name>/invocations[-response-stream]; `invoke()` answers /invocations."""
    return None
