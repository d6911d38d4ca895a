"""Load a user's handler the way DJL Serving does.

The entry point is `option.entryPoint` (a .py file in the model dir, or an importable module)
or model.py; the function is `option.handler` (default `handle`). A module written in
SageMaker's style (model_fn / input_fn / predict_fn / output_fn) is wrapped so it answers the
same Input/Output contract.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from container.errors import StartupError

from .sagemaker_style import SageMakerStyleHandler

# Code from a URL runs with the server's rights: only the operator (an environment variable,
# not the model's own serving.properties) can allow it.
ALLOW_URL_ENV = "SERVING_ALLOW_ENTRYPOINT_URL"
URL_SCHEMES = ("http://", "https://", "s3://")
MAX_ENTRY_POINT_BYTES = 10 << 20

_BUILTIN_ENTRY_POINTS = {
    # DJL's own handlers, named by users in serving.properties; served by our engines instead.
    "djl_python.huggingface", "djl_python.deepspeed", "djl_python.transformers_neuronx",
    "djl_python.lmi_vllm.vllm_async_service", "djl_python.lmi_trtllm.trtllm_async_service",
    "djl_python.tensorrt_llm",
}


def is_builtin_entry_point(entry_point: str | None) -> bool:
    return bool(entry_point) and entry_point.strip() in _BUILTIN_ENTRY_POINTS


def _import_file(path: Path):
    name = path.stem if path.stem not in sys.modules else f"model_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module(model_dir: Path, entry_point: str | None):
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    entry = (entry_point or "model.py").strip()
    if "://" in entry:
        return _import_file(fetch_entry_point(entry))
    if entry.endswith(".py"):
        path = Path(entry) if Path(entry).is_absolute() else model_dir / entry
        if not path.is_file():
            raise StartupError(f"handler file {path} not found: add it to the model directory or "
                               "fix option.entryPoint")
        return _import_file(path)
    try:
        return importlib.import_module(entry)
    except ModuleNotFoundError as exc:
        raise StartupError(f"option.entryPoint={entry}: module not found ({exc}); name a .py file "
                           "in the model directory or an installed module") from None


def fetch_entry_point(url: str) -> Path:
    """Download a handler named by URL (only where the operator allowed it) and return its path."""
    if os.environ.get(ALLOW_URL_ENV, "").strip().lower() not in ("1", "true", "yes"):
        raise StartupError(
            f"option.entryPoint={url} is a URL, and loading handler code from URLs is off: put "
            f"the handler file in the model directory (option.entryPoint=model.py), or start "
            f"serve with {ALLOW_URL_ENV}=true if you trust that URL")
    if not url.startswith(URL_SCHEMES) or not url.endswith(".py"):
        raise StartupError(f"option.entryPoint={url}: a URL entry point must be an http(s):// or "
                           "s3:// URL of a .py file")
    target_dir = Path(os.environ.get("SERVE_RUN_DIR") or tempfile.gettempdir()) / "entrypoints"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}_{Path(url).name}"
    try:
        data = _download(url)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise StartupError(f"option.entryPoint={url} could not be downloaded: {exc}") from None
    if len(data) > MAX_ENTRY_POINT_BYTES:
        raise StartupError(f"option.entryPoint={url} is larger than "
                           f"{MAX_ENTRY_POINT_BYTES >> 20} MB; a handler file is expected")
    target.write_bytes(data)
    return target


def _download(url: str) -> bytes:
    if url.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        from container.storage.s3_client import describe_failure, make_client, parse_s3_url

        location = parse_s3_url(url)
        try:
            body = make_client(1).get_object(Bucket=location.bucket, Key=location.key)["Body"]
            return body.read(MAX_ENTRY_POINT_BYTES + 1)
        except (ClientError, BotoCoreError) as exc:
            raise describe_failure(url, exc) from None
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - scheme checked
        return response.read(MAX_ENTRY_POINT_BYTES + 1)


def load_handler(model_dir: str | Path, options: dict[str, str]) -> Callable:
    """Import the handler module and return the callable that takes an Input."""
    model_dir = Path(model_dir)
    lowered = {k.lower(): v for k, v in options.items()}
    module = load_module(model_dir, lowered.get("entrypoint"))
    function_name = lowered.get("handler", "handle")
    function = getattr(module, function_name, None)
    if callable(function):
        return function
    if callable(getattr(module, "model_fn", None)) or callable(getattr(module, "predict_fn", None)):
        return SageMakerStyleHandler(module, model_dir)
    raise StartupError(
        f"{getattr(module, '__file__', module.__name__)} defines no {function_name}(inputs) "
        "function (nor SageMaker-style model_fn/predict_fn): add one or set option.handler")
