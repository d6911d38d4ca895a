"""DJL's adapters API on the handler path: the registry of adapters and the handler's hooks.

Registering calls the handler module's `register_adapter(inputs)` (properties: name, src,
preload, pin and any extra options), updating `update_adapter`, unregistering
`unregister_adapter`; a module without the hook just has the adapter recorded (its requests
still carry `adapter`). A hook that raises or answers an error leaves the registry as it was.
Adapters in the model directory's `adapters/` folder are registered at start. The registry
lives on rank 0 (every rank's handler is called), so every front-end process sees the same one;
a restarted worker registers the `adapters/` folder again but not adapters added over HTTP.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from djl_python import Input, Output

from . import protocol

log = logging.getLogger(__name__)

HOOKS = {"register": "register_adapter", "update": "update_adapter",
         "unregister": "unregister_adapter"}


@dataclass
class Adapter:
    name: str
    src: str
    preload: bool = True
    pin: bool = False
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "src": self.src, "preload": self.preload, "pin": self.pin,
                **({"options": self.options} if self.options else {})}


class AdapterFailure(Exception):
    def __init__(self, code: int, type_: str, message: str):
        super().__init__(message)
        self.code, self.type, self.message = code, type_, message


def _flag(properties: dict[str, str], key: str, default: bool) -> bool:
    raw = properties.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise AdapterFailure(400, "InvalidAdapterOption", f"{key}={raw!r}: allowed: true, false")
    return value == "true"


class HandlerAdapters:
    def __init__(self, service):
        self.service = service               # HandlerService: handler, channel, ipc
        self.adapters: dict[str, Adapter] = {}

    # start-up ---------------------------------------------------------------------------------
    def register_folder(self, model_dir: str) -> None:
        folder = Path(model_dir) / "adapters"
        if not folder.is_dir():
            return
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                self.register(path.name, {"src": str(path)})
            except AdapterFailure as failure:
                from ..errors import StartupError

                raise StartupError(f"adapter {path}: {failure.message}") from None
            log.info("adapter %s registered from %s", path.name, path)

    # actions ----------------------------------------------------------------------------------
    def register(self, name: str, properties: dict[str, str]) -> dict:
        if not name:
            raise AdapterFailure(400, "InvalidAdapter", "name is required (?name=...)")
        if name in self.adapters:
            raise AdapterFailure(409, "AdapterExists", f"adapter {name!r} is already registered; "
                                 f"update it (POST .../adapters/{name}/update) or unregister it")
        src = properties.get("src")
        if not src:
            raise AdapterFailure(400, "InvalidAdapter", "src is required (?src=/path/to/adapter)")
        pin = _flag(properties, "pin", False)
        adapter = Adapter(name, src, preload=_flag(properties, "preload", True) or pin, pin=pin,
                          options=_extra(properties))
        self._call_hook("register", adapter, properties)
        self.adapters[name] = adapter
        return {"status": f"Adapter {name} registered"}

    def update(self, name: str, properties: dict[str, str]) -> dict:
        adapter = self._known(name)
        pin = _flag(properties, "pin", adapter.pin)
        updated = Adapter(name, properties.get("src", adapter.src),
                          preload=_flag(properties, "preload", adapter.preload) or pin, pin=pin,
                          options={**adapter.options, **_extra(properties)})
        self._call_hook("update", updated, properties)
        self.adapters[name] = updated
        return {"status": f"Adapter {name} updated"}

    def unregister(self, name: str) -> dict:
        adapter = self._known(name)
        self._call_hook("unregister", adapter, {})
        del self.adapters[name]
        return {"status": f"Adapter {name} unregistered"}

    def describe(self, name: str) -> list:
        return [self._known(name).describe()]

    def list(self, limit: int, page_token: int) -> dict:
        names = sorted(self.adapters)
        if limit <= 0 or page_token < 0:
            raise AdapterFailure(400, "InvalidPage",
                                 "limit must be positive and next_page_token not negative")
        page = names[page_token:page_token + limit]
        result = {"adapters": [self.adapters[n].describe() for n in page]}
        if page_token + limit < len(names):
            result["nextPageToken"] = str(page_token + limit)
        return result

    def _known(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise AdapterFailure(404, "AdapterNotFound", f"adapter {name!r} is not registered; "
                                 f"registered: {', '.join(sorted(self.adapters)) or 'none'}")
        return self.adapters[name]

    def _call_hook(self, action: str, adapter: Adapter, properties: dict[str, str]) -> None:
        module = sys.modules.get(getattr(self.service.handler, "__module__", "") or "")
        hook = getattr(module, HOOKS[action], None) if module is not None else None
        if not callable(hook):
            return
        inputs = Input()
        inputs.properties = {**adapter.options, **properties, "name": adapter.name,
                             "src": adapter.src, "preload": str(adapter.preload).lower(),
                             "pin": str(adapter.pin).lower()}
        inputs.function_name = HOOKS[action]
        if self.service.channel is not None:
            self.service.channel.broadcast_input(inputs)
        try:
            output = hook(inputs)
        except BaseException as exc:  # noqa: BLE001 - user code
            from .handler_service import classify_exception

            code, type_ = classify_exception(exc)
            log.exception("%s(%s) raised", HOOKS[action], adapter.name)
            raise AdapterFailure(code, type_, f"{HOOKS[action]} failed for adapter "
                                 f"{adapter.name!r}: {type(exc).__name__}: {exc}") from None
        if isinstance(output, Output) and int(output.code) >= 400:
            body = b"".join(bytes(v) for _, v in output.content).decode("utf-8", "replace")
            raise AdapterFailure(int(output.code), "HandlerError",
                                 f"{HOOKS[action]} failed for adapter {adapter.name!r}: {body}")

    # the worker's message -------------------------------------------------------------------
    def handle(self, identity: bytes, message: protocol.AdapterRequest) -> None:
        try:
            if message.action == "register":
                result, code = self.register(message.name, dict(message.properties)), 200
            elif message.action == "update":
                result, code = self.update(message.name, dict(message.properties)), 200
            elif message.action == "unregister":
                result, code = self.unregister(message.name), 200
            elif message.action == "describe":
                result, code = self.describe(message.name), 200
            elif message.action == "list":
                result, code = self.list(message.limit, message.page_token), 200
            else:
                raise AdapterFailure(400, "InvalidAction", f"unknown action {message.action!r}")
        except AdapterFailure as failure:
            result, code = {"code": failure.code, "type": failure.type,
                            "message": failure.message}, failure.code
        self.service.ipc.send(identity, protocol.HandleReply(
            message.request_id, code, "OK" if code < 400 else "error",
            {"content-type": "application/json"}, json.dumps(result).encode()), finished=1)


_KNOWN = {"name", "src", "preload", "pin"}


def _extra(properties: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in properties.items() if k not in _KNOWN}
