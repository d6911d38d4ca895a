"""Which LoRA adapter a text-generation request asks for, from wherever a client may say it.

In order: LMI's `adapters` field (one name, or one per input), OpenAI's `model` naming an
adapter, SageMaker's X-Amzn-SageMaker-Adapter-Identifier header, then `?adapter=`. "" (or the
model's own name) is the base model. Whether the name is registered is the engine's answer (a
404 naming it), never a silent fall-back to the base model.
"""

from __future__ import annotations

from flask import request

from ..errors import bad_request
from .handler_proxy import ADAPTER_HEADER


def _checked(info: dict, name: str, field: str) -> str:
    if name and not info.get("lora"):
        raise bad_request(f"{field}: adapter {name!r} asked for, but this model serves no LoRA "
                          "adapters (the native engine does with option.enable_lora=true)")
    return name


def request_adapter(info: dict, model_name: str) -> str:
    """The header's or the query's adapter ("" when neither names one)."""
    for field, value in ((f"header {ADAPTER_HEADER}", request.headers.get(ADAPTER_HEADER)),
                         ("query parameter adapter", request.args.get("adapter"))):
        name = (value or "").strip()
        if name:
            return "" if name == model_name else _checked(info, name, field)
    return ""


def lmi_adapters(info: dict, model_name: str, value, count: int, default: str) -> list[str]:
    """One adapter per input of an LMI request."""
    if value is None:
        return [default] * count
    names = [value] * count if isinstance(value, str) else list(value)
    if len(names) != count:
        raise bad_request(f"adapters: {len(names)} names for {count} inputs; give one name, or "
                          "one per input")
    field = "adapters" if isinstance(value, str) else "adapters.{}"
    return ["" if n.strip() in ("", model_name) else
            _checked(info, n.strip(), field.format(i)) for i, n in enumerate(names)]


def openai_adapter(info: dict, model_name: str, model: str | None, default: str) -> str:
    """OpenAI's `model`: the served model's name is the base; with LoRA on, another name is an
    adapter's (without LoRA any name is accepted, as before)."""
    name = (model or "").strip()
    if not name or name == model_name or not info.get("lora"):
        return default
    return name
