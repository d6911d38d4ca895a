"""Tokenizer and chat template for the front end, without importing transformers or torch.

Reads tokenizer.json with the `tokenizers` library and renders the checkpoint's chat template
(tokenizer_config.json's chat_template or chat_template.jinja) with jinja2 in a sandbox, the
way transformers' apply_chat_template does. Front-end processes stay small and start fast.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ..errors import ServingError, bad_request


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextTokenizer:
    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the native engine needs a fast "
                                    "tokenizer (tokenizer.json) next to the weights")
        self.tokenizer = Tokenizer.from_file(str(path))
        config_path = model_dir / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.add_bos_token = bool(self.config.get("add_bos_token", False))
        template = self.config.get("chat_template")
        named = []
        if isinstance(template, list):   # named templates: take "default"
            named = [t["template"] for t in template if isinstance(t.get("template"), str)]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_file = model_dir / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        self.chat_template = template
        # every template the checkpoint ships (a "tool_use" one shows the tool-call format)
        self.chat_templates = list(dict.fromkeys(t for t in [template, *named] if t))
        added = self.tokenizer.get_added_tokens_decoder()
        self.special_ids = {i for i, t in added.items() if t.special}
        self.bos_id = self.tokenizer.token_to_id(self.bos_token) if self.bos_token else None

    @cached_property
    def max_token_chars(self) -> int:
        """The longest vocabulary entry, in characters: no token covers more of a text (for
        byte-level vocabularies an entry's characters are its bytes, at least its characters)."""
        return max((len(piece) for piece in self.tokenizer.get_vocab(with_added_tokens=True)),
                   default=1)

    # encoding ----------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and self.bos_id is not None and (
                not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # chat --------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **extra) -> str:
        if not self.chat_template:
            raise ServingError(400, "BadRequest",
                               "this model has no chat template, so `messages` cannot be used; "
                               "send {\"inputs\": \"...\"} instead")
        try:
            return _compile(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)
        except TemplateError as exc:
            raise bad_request(f"the chat template rejected these messages: {exc}") from None

    def encode_chat(self, messages: list[dict], **extra) -> list[int]:
        # The template writes the special tokens itself, as transformers assumes.
        return self.encode(self.apply_chat_template(messages, **extra), add_special_tokens=False)


def _raise_exception(message):
    raise TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
        value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)
