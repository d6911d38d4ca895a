"""What the adapter reads from a checkpoint or an engine directory: vocabulary size, EOS token
ids and where the tokenizer is. Plain JSON reading; TensorRT-LLM reads the weights itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import StartupError
from .trtllm_cache import EngineDir

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ModelFacts:
    tokenizer_dir: Path
    vocab_size: int
    eos_token_ids: list[int]


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise StartupError(f"{path} is not valid JSON: {exc}") from None
    return value if isinstance(value, dict) else {}


def _ids(value) -> list[int]:
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value or [] if isinstance(v, int)]


def _tokenizer_eos(directory: Path) -> list[int]:
    """EOS from tokenizer_config.json's eos_token, looked up in tokenizer.json."""
    eos = _json(directory / "tokenizer_config.json").get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if not eos or not (directory / TOKENIZER_FILE).is_file():
        return []
    from tokenizers import Tokenizer

    token_id = Tokenizer.from_file(str(directory / TOKENIZER_FILE)).token_to_id(eos)
    return [] if token_id is None else [token_id]


def _eos_ids(config: dict, directory: Path) -> list[int]:
    ids = _ids(config.get("eos_token_id"))
    for extra in _ids(_json(directory / "generation_config.json").get("eos_token_id")):
        if extra not in ids:
            ids.append(extra)
    return ids or _tokenizer_eos(directory)


def _require_tokenizer(directory: Path, what: str) -> None:
    if not (directory / TOKENIZER_FILE).is_file():
        raise StartupError(f"{directory / TOKENIZER_FILE} not found: {what}")


def _require_eos(ids: list[int], directory: Path) -> list[int]:
    if not ids:
        raise StartupError(f"no EOS token id in {directory} (config.json, generation_config.json "
                           "or tokenizer_config.json): add eos_token_id to config.json")
    return ids


def checkpoint_facts(model_dir: Path) -> ModelFacts:
    """A Hugging Face checkpoint directory (compiled just in time)."""
    config = _json(model_dir / "config.json")
    if not config:
        raise StartupError(f"{model_dir / 'config.json'} not found: option.model_id must point "
                           "at a Hugging Face checkpoint or a directory of TensorRT-LLM engines")
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if not isinstance(vocab, int):
        raise StartupError(f"{model_dir / 'config.json'} has no vocab_size")
    _require_tokenizer(model_dir, "the front end needs the checkpoint's fast tokenizer")
    return ModelFacts(model_dir, vocab, _require_eos(_eos_ids(config, model_dir), model_dir))


def engine_facts(engines: EngineDir) -> ModelFacts:
    """A directory of prebuilt engines: the tokenizer files must sit next to the engines."""
    _require_tokenizer(engines.path, "copy the original checkpoint's tokenizer files "
                                     "(tokenizer.json, tokenizer_config.json, "
                                     "generation_config.json) next to the engines")
    pretrained = engines.pretrained_config
    vocab = pretrained.get("vocab_size")
    if not isinstance(vocab, int):
        raise StartupError(f"{engines.path / 'config.json'} has no pretrained_config.vocab_size")
    ids = _ids(pretrained.get("eos_token_id")) + [
        i for i in _ids(_json(engines.path / "generation_config.json").get("eos_token_id"))]
    ids = list(dict.fromkeys(ids)) or _tokenizer_eos(engines.path)
    return ModelFacts(engines.path, vocab, _require_eos(ids, engines.path))
