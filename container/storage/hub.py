"""option.model_id=org/name: a Hugging Face Hub repo, fetched with huggingface_hub once per host.

Only what the engine reads is fetched: top-level config, generation config, tokenizer files and
safetensors (never .bin, never subfolders such as onnx/ or original/). The files live in the
Hugging Face cache layout (models--org--name/snapshots/<commit>/...): SERVING_DOWNLOAD_DIR/hub
when SERVING_DOWNLOAD_DIR is set, else huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE), so
a cache warmed by `hf download` or transformers is used as is. huggingface_hub itself reads
HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE; with HF_HUB_OFFLINE=1, or when the Hub cannot be
reached, a cached snapshot loads with no network call.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, snapshot_download
from huggingface_hub import errors
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from ..errors import StartupError
from .host_lock import download_root, once_per_host
from .progress import LoggedTqdm
from .selection import HUB_PATTERNS

log = logging.getLogger(__name__)
# newer huggingface_hub tells a partial cached snapshot apart from a missing one
_INCOMPLETE = getattr(errors, "IncompleteSnapshotError", ())


def hub_cache_dir() -> Path:
    if os.environ.get("SERVING_DOWNLOAD_DIR"):
        return download_root() / "hub"
    return Path(constants.HF_HUB_CACHE).expanduser()


def fetch_hub_model(model_id: str, config) -> Path:
    """The local snapshot directory of a Hub model id (downloading what is missing)."""
    revision = config.option("revision") or None
    cache_dir = hub_cache_dir()
    lock_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_id}@{revision or 'main'}")
    with once_per_host(download_root() / "hub-locks" / lock_name, model_id):
        try:
            path = Path(snapshot_download(
                model_id, revision=revision, cache_dir=cache_dir,
                allow_patterns=list(HUB_PATTERNS), ignore_patterns=["*/*"],
                tqdm_class=LoggedTqdm))
        except Exception as exc:   # noqa: BLE001 - every Hub failure becomes one line
            raise describe_failure(model_id, revision, cache_dir, exc) from None
    if not (path / "config.json").is_file():
        raise StartupError(f"option.model_id={model_id}: the snapshot in {path} has no "
                           "config.json: is it a transformers model repository?")
    if not any(path.glob("*.safetensors")):
        raise StartupError(f"option.model_id={model_id}: the snapshot in {path} has no "
                           "*.safetensors weights (only .bin weights are never fetched): use a "
                           "revision with safetensors, or convert the weights with "
                           "save_pretrained(..., safe_serialization=True)")
    log.info("option.model_id=%s resolved to %s", model_id, path)
    return path


def _not_cached(model_id: str, revision: str | None, cache_dir: Path, why: str) -> StartupError:
    return StartupError(
        f"option.model_id={model_id} (revision {revision or 'main'}) is not in the Hugging Face "
        f"cache {cache_dir} and {why}: download it there first (HF_HUB_CACHE={cache_dir} hf "
        f"download {model_id}), or set option.model_id to a local directory or an s3:// URL")


def describe_failure(model_id: str, revision: str | None, cache_dir: Path,
                     exc: Exception) -> StartupError:
    """One line naming the model id and the cause."""
    where = f"option.model_id={model_id}"
    endpoint = constants.ENDPOINT
    cause = exc.__cause__
    if isinstance(exc, LocalEntryNotFoundError) and isinstance(cause, HfHubHTTPError) \
            and not isinstance(cause, RepositoryNotFoundError):
        exc = cause          # the Hub answered, nothing was cached: the answer is the reason
    if isinstance(exc, HFValidationError):
        return StartupError(f"{where} is neither a local directory, an s3:// URL, nor a valid "
                            "Hugging Face Hub id (org/name): check the value")
    if isinstance(exc, GatedRepoError):
        return StartupError(f"{where}: the repository is gated on {endpoint}: accept its terms "
                            "with your Hub account and set HF_TOKEN to a token of that account")
    if isinstance(exc, RevisionNotFoundError):
        return StartupError(f"{where}: revision {revision or 'main'} does not exist on "
                            f"{endpoint}: check option.revision / HF_REVISION")
    if isinstance(exc, RepositoryNotFoundError):
        token = "HF_TOKEN is set" if huggingface_hub.get_token() else "no HF_TOKEN is set"
        return StartupError(f"{where}: no such repository on {endpoint}, or it is private and "
                            f"{token}: check the id, or set HF_TOKEN to a token with access")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return StartupError(f"{where}: {endpoint} refused HF_TOKEN (401 invalid "
                                "credentials): set HF_TOKEN to a valid token, or unset it for "
                                "public models")
        if status == 403:
            return StartupError(f"{where}: {endpoint} denied access (403): the token in HF_TOKEN "
                                "lacks read permission on this repository")
        return StartupError(f"{where}: {endpoint} answered HTTP {status}: retry later, or "
                            "pre-download the model and point option.model_id at it")
    if isinstance(exc, _INCOMPLETE):
        return StartupError(f"{where}: the cached snapshot in {cache_dir} is incomplete and the "
                            f"Hub cannot be reached: download it again with network access")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        why = ("HF_HUB_OFFLINE=1 forbids downloads" if constants.HF_HUB_OFFLINE
               else f"the Hub at {endpoint} cannot be reached")
        return _not_cached(model_id, revision, cache_dir, why)
    return StartupError(f"{where}: fetching it from {endpoint} failed: "
                        f"{type(exc).__name__}: {exc}")
