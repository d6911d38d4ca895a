"""The flask application: SageMaker's /ping and /invocations, DJL's /predictions and /models,
the OpenAI routes, and JSON errors for everything that goes wrong."""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from ..config.loader import ServingConfig
from ..errors import ServingError
from ..metrics import metrics
from ..workers.rundir import RunDir
from . import handler_proxy
from .llm_sessions import LlmSessions
from .management_routes import register_management_routes
from .served_models import ModelRouter
from .metrics_route import register_metrics_route
from .engine_client import get_client
from .http_utils import INFERENCE_ID_HEADER, error_response, json_response, request_id

access_log = logging.getLogger("container.access")
log = logging.getLogger(__name__)


def create_app(run_dir: str) -> Flask:
    run = RunDir(run_dir)
    config = ServingConfig.from_json(run.config_path.read_text(encoding="utf-8"))
    app = Flask("serve")
    app.config["MAX_CONTENT_LENGTH"] = int(config.setting("max_request_size"))
    predict_timeout = float(config.setting("predict_timeout"))
    allow_handler_override = os.environ.get(
        handler_proxy.ALLOW_HANDLER_OVERRIDE_ENV, "").strip().lower() in ("1", "true", "yes")

    router = ModelRouter(run, config)

    def client():
        return get_client(run)

    # bookkeeping --------------------------------------------------------------------------
    @app.before_request
    def start_request():
        g.request_id = request_id()
        g.started = time.monotonic()

    @app.after_request
    def finish_request(response):
        response.headers["X-Request-Id"] = g.request_id
        if request.headers.get(INFERENCE_ID_HEADER):
            response.headers[INFERENCE_ID_HEADER] = g.request_id
        rid, method, path, started = g.request_id, request.method, request.path, g.started
        status = response.status_code
        route = request.url_rule.rule if request.url_rule else "unmatched"

        def log_line():
            elapsed = time.monotonic() - started
            access_log.info("%s %s %s %d %.1fms", rid, method, path, status, elapsed * 1000)
            m = metrics()
            m.requests.labels(route, method, str(status)).inc()
            m.request_seconds.labels(route).observe(elapsed)
        response.call_on_close(log_line)
        return response

    @app.errorhandler(ServingError)
    def serving_error(error: ServingError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        messages = {
            404: "no such route; see /openapi.json for the routes this server answers",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"the body is larger than max_request_size="
                 f"{app.config['MAX_CONTENT_LENGTH']} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
        }
        names = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}
        code = error.code or 500
        return error_response(ServingError(code, names.get(code, type(error).__name__),
                                           messages.get(code, error.description or str(error)),
                                           {k: v for k, v in error.get_headers() if k == "Allow"}))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(ServingError(500, "InternalServerError",
                                           f"internal error ({type(error).__name__}); "
                                           f"request id {g.get('request_id')}"))

    # health and models --------------------------------------------------------------------
    @app.get("/ping")
    def ping():
        status = client().status.get()
        if status.ready:
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy", "state": status.state,
                              "message": status.message}, 503)

    register_management_routes(app, router, float(config.setting("model_loading_timeout")))

    # inference ----------------------------------------------------------------------------
    sessions = LlmSessions(config)

    def invoke(model=None):
        model = model or router.for_request()
        if model.kind() == "llm":
            from . import llm_routes

            if model.entry.default:
                answered = sessions.intercept()
                if answered is not None:
                    return answered
            return llm_routes.invocations(model.client, model.config, g.request_id)
        return handler_proxy.invoke_handler(model.client, g.request_id,
                                            float(model.config.setting("predict_timeout")),
                                            allow_handler_override)

    @app.post("/invocations")
    def invocations():
        return invoke()

    @app.post("/predictions/<name>")
    @app.post("/predictions/<name>/<version>")
    def predictions(name: str, version: str | None = None):
        return invoke(router.get(name))

    from .llm_routes import register_openai_routes
    from .openapi import register_openapi_route
    from .sagemaker_routes import register_sagemaker_routes

    from .adapter_routes import register_adapter_routes

    register_adapter_routes(app, router, predict_timeout + 10)
    register_openai_routes(app, client, config)
    register_sagemaker_routes(app, invoke)
    register_metrics_route(app, client)
    register_openapi_route(app, config)
    return app
