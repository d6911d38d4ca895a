"""Where an adapter's `src` points: a local folder, s3:// (fetched as S3 weights are), or a Hub
id; the result is always a local folder holding adapter_config.json."""

from __future__ import annotations

from pathlib import Path

from ...errors import StartupError
from .errors import LoRAError

HUB_FILES = ["adapter_config.json", "adapter_model.safetensors"]


def resolve_adapter_dir(name: str, src: str, model_dir: Path | None = None) -> Path:
    if not src:
        raise LoRAError(400, "InvalidAdapter", f"adapter {name!r}: src is required")
    if src.startswith("s3://"):
        from ...storage.s3 import fetch_s3

        try:
            return fetch_s3(src if src.endswith("/") else src + "/")
        except StartupError as exc:
            raise LoRAError(400, "AdapterNotLoaded", f"adapter {name!r}: {exc}") from None
    path = Path(src).expanduser()
    if not path.is_absolute() and model_dir is not None and (model_dir / path).exists():
        path = model_dir / path
    if path.is_dir():
        return path.resolve()
    if path.exists() or src.startswith(("/", ".")) or src.count("/") != 1:
        raise LoRAError(400, "InvalidAdapter",
                        f"adapter {name!r}: src={src} is not a folder, an s3:// prefix or a "
                        "Hub id (owner/name)")
    return _hub(name, src)


def _hub(name: str, repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:   # noqa: BLE001 - every Hub failure becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoRAError(400, "AdapterNotLoaded",
                        f"adapter {name!r}: Hub id {repo_id} could not be fetched: {first}") \
            from None
