"""DJL's adapters API (register | update | unregister | list | describe) on the native engine.

The front end sends AdapterRequest messages (frontend/adapter_routes.py); rank 0 answers them
between steps, so a registration never races a step. Answers have the shape the handler path's
registry gives (workers/handler_adapters.py), so clients see one API.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ...workers import protocol
from .errors import LoRAError
from .registry import LoRARegistry

log = logging.getLogger(__name__)
_KNOWN = {"name", "src", "preload", "pin"}


def answer(registry: LoRARegistry, message: protocol.AdapterRequest) -> tuple[int, dict | list]:
    try:
        return 200, _dispatch(registry, message)
    except LoRAError as error:
        return error.code, {"code": error.code, "type": error.type, "message": error.message}


def _dispatch(registry: LoRARegistry, message: protocol.AdapterRequest):
    action, name, properties = message.action, message.name, dict(message.properties)
    if action == "register":
        if not properties.get("src"):
            raise LoRAError(400, "InvalidAdapter", "src is required (?src=/path/to/adapter)")
        registry.register(name, properties["src"], _extra(properties))
        return {"status": f"Adapter {name} registered"}
    if action == "update":
        entry = registry.get(name)
        src = properties.get("src", entry.src)
        if src == entry.src:
            entry.options.update(_extra(properties))
        else:   # new weights: register afresh (a new id, so no stale KV or slot is reused)
            registry.unregister(name)
            try:
                registry.register(name, src, {**entry.options, **_extra(properties)})
            except LoRAError:
                registry.register(name, entry.src, entry.options)
                raise
        return {"status": f"Adapter {name} updated"}
    if action == "unregister":
        registry.unregister(name)
        return {"status": f"Adapter {name} unregistered"}
    if action == "describe":
        return [registry.get(name).describe()]
    if action == "list":
        if message.limit <= 0 or message.page_token < 0:
            raise LoRAError(400, "InvalidPage",
                            "limit must be positive and next_page_token not negative")
        names = sorted(registry.adapters)
        page = names[message.page_token:message.page_token + message.limit]
        result = {"adapters": [registry.adapters[n].describe() for n in page]}
        if message.page_token + message.limit < len(names):
            result["nextPageToken"] = str(message.page_token + message.limit)
        return result
    raise LoRAError(400, "InvalidAction", f"unknown action {action!r}")


def reply(message: protocol.AdapterRequest, code: int, body) -> protocol.HandleReply:
    return protocol.HandleReply(message.request_id, code, "OK" if code < 400 else "error",
                                {"content-type": "application/json"}, json.dumps(body).encode())


def register_at_start(registry: LoRARegistry, listed, model_dir: Path) -> None:
    """option.adapters, then every folder of the model dir's adapters/; a bad one stops start-up
    with its one line (an endpoint must not come up without an adapter it was given)."""
    from ...errors import StartupError

    entries = list(listed)
    folder = Path(model_dir) / "adapters"
    if folder.is_dir():
        entries += [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_dir()]
    for name, src in entries:
        try:
            registry.register(name, src)
        except LoRAError as error:
            raise StartupError(error.message) from None


def _extra(properties: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in properties.items() if k not in _KNOWN}
