"""DJL's adapters API: /models/{model}/adapters[/{name}[/update]] and the short /adapters forms.

Arguments come as query parameters (as DJL documents), or as a JSON object or form body. The
registry lives in the worker (a handler's, or the native engine's LoRA registry with
option.enable_lora); this module only turns HTTP into AdapterRequest messages.
"""

from __future__ import annotations

import json
import time

from flask import Response, request

from ..errors import ServingError, bad_request
from ..workers import protocol
from .http_utils import engine_request_id


def _arguments() -> dict[str, str]:
    arguments = {k: v for k, v in request.args.items()}
    if request.mimetype == "application/json" and request.get_data():
        try:
            body = json.loads(request.get_data())
        except ValueError as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object of adapter arguments")
        arguments.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()})
    elif request.form:
        arguments.update(request.form.items())
    return arguments


def _page() -> tuple[int, int]:
    try:
        return (int(request.args.get("limit", "100")),
                int(request.args.get("next_page_token", "0") or 0))
    except ValueError:
        raise bad_request("limit and next_page_token must be integers") from None


def register_adapter_routes(app, router, reply_timeout) -> None:
    def send(model_name: str | None, action: str, name: str = "",
             properties: dict | None = None, page: tuple[int, int] = (100, 0)) -> Response:
        from .handler_proxy import _first_reply

        model = router.default if model_name is None else router.get(model_name)
        info = model.client.model_info()
        if info.get("kind") == "llm" and not info.get("lora"):
            raise ServingError(501, "AdaptersNotSupported",
                               "this model serves no LoRA adapters: the native engine does with "
                               "option.enable_lora=true; model.py handlers have their own hooks")
        engine = model.client
        request_id = engine_request_id(request.headers.get("X-Request-Id", "adapter"))
        message = protocol.AdapterRequest(request_id, engine.ready_generation(), action, name,
                                          properties or {}, page[0], page[1], time.time())
        box = engine.submit(message)
        try:
            reply = _first_reply(box, reply_timeout)
        finally:
            engine.release(request_id)
        return Response(reply.body, status=reply.code, mimetype="application/json")

    def register(model_name=None):
        arguments = _arguments()
        return send(model_name, "register", arguments.pop("name", ""), arguments)

    def listing(model_name=None):
        return send(model_name, "list", page=_page())

    def describe(adapter: str, model_name=None):
        return send(model_name, "describe", adapter)

    def update(adapter: str, model_name=None):
        return send(model_name, "update", adapter, _arguments())

    def unregister(adapter: str, model_name=None):
        return send(model_name, "unregister", adapter)

    for prefix in ("/models/<model_name>", ""):
        app.add_url_rule(f"{prefix}/adapters", f"adapters_register{prefix}", register,
                         methods=["POST"])
        app.add_url_rule(f"{prefix}/adapters", f"adapters_list{prefix}", listing,
                         methods=["GET"])
        app.add_url_rule(f"{prefix}/adapters/<adapter>", f"adapters_describe{prefix}",
                         describe, methods=["GET"])
        app.add_url_rule(f"{prefix}/adapters/<adapter>", f"adapters_unregister{prefix}",
                         unregister, methods=["DELETE"])
        app.add_url_rule(f"{prefix}/adapters/<adapter>/update", f"adapters_update{prefix}",
                         update, methods=["POST"])
