"""The flask application: SageMaker's /ping and /invocations, DJL's /predictions and /models,
the OpenAI routes, and JSON errors for everything that goes wrong."""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from ..config.loader import ServingConfig
from ..errors import ServingError
from ..metrics import metrics
from ..workers.rundir import RunDir
from . import handler_proxy
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

    def client():
        return get_client(run)

    def model_kind() -> str:
        return client().model_info().get("kind", "handler")

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

    def describe() -> dict:
        status = client().status.get()
        return {
            "modelName": config.model_name,
            "modelUrl": config.option("model_id") or config.model_dir,
            "engine": config.engine,
            "engineKind": config.engine_kind,
            "tensorParallelDegree": config.tensor_parallel_degree,
            "batchSize": config.setting("batch_size"),
            "maxBatchDelay": config.setting("max_batch_delay"),
            "jobQueueSize": config.setting("job_queue_size"),
            "status": "Healthy" if status.ready else "Unhealthy",
            "workerState": status.state,
            "workerRestarts": status.restarts,
            # LLM engines: which model code serves it (native or transformers) and why
            "architecture": status.model.get("architecture"),
            "modelPath": status.model.get("model_path"),
            "modelPathReason": status.model.get("model_path_reason"),
            "attention": status.model.get("attention"),
            "workers": [{"id": status.generation, "pid": status.model.get("pid"),
                         "ranks": status.model.get("ranks"),
                         "rankPids": status.model.get("rank_pids"), "status": status.state}],
        }

    @app.get("/models")
    def list_models():
        status = client().status.get()
        return json_response({"models": [{
            "modelName": config.model_name,
            "modelUrl": config.option("model_id") or config.model_dir,
            "status": "Healthy" if status.ready else "Unhealthy"}]})

    @app.get("/models/<name>")
    def describe_model(name: str):
        check_model_name(name)
        described = describe()
        if client().status.get().ready:
            described["engineStats"] = client().stats()
        return json_response([described])

    def check_model_name(name: str) -> None:
        if name != config.model_name:
            raise ServingError(404, "ModelNotFound",
                               f"model {name!r} is not served here; this server serves "
                               f"{config.model_name!r}")

    # inference ----------------------------------------------------------------------------
    def invoke():
        if model_kind() == "llm":
            from . import llm_routes

            return llm_routes.invocations(client(), config, g.request_id)
        return handler_proxy.invoke_handler(client(), g.request_id, predict_timeout)

    @app.post("/invocations")
    def invocations():
        return invoke()

    @app.post("/predictions/<name>")
    @app.post("/predictions/<name>/<version>")
    def predictions(name: str, version: str | None = None):
        check_model_name(name)
        return invoke()

    from .llm_routes import register_openai_routes
    from .openapi import register_openapi_route
    from .sagemaker_routes import register_sagemaker_routes

    register_openai_routes(app, client, config)
    register_sagemaker_routes(app, invoke)
    register_metrics_route(app, client)
    register_openapi_route(app, config)
    return app
