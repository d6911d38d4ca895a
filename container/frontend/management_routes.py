"""DJL's management API: list, describe, register, scale and unregister models at run time.

`GET /models` (paged: limit, next_page_token), `GET /models/{name}`,
`POST /models?url=...&model_name=...` (local directory, s3:// prefix or model.tar.gz; optional
batch_size, max_batch_delay, job_queue_size; answers once the model is loaded, or at once with
202 when synchronous=false), `PUT /models/{name}?min_worker=&max_worker=` and
`DELETE /models/{name}`. serve does the work (its control requests); this module waits for the
answer.
"""

from __future__ import annotations

import time

import gevent
from flask import request

from ..errors import ServingError, bad_request
from ..workers import model_set
from .http_utils import json_response
from .served_models import ModelRouter, ServedModel

POLL_S = 0.1


def describe(model: ServedModel) -> dict:
    config = model.config
    status = model.client.status.get()
    return {
        "modelName": model.name,
        "modelUrl": model.entry.url,
        "default": model.entry.default,
        "engine": config.engine,
        "engineKind": config.engine_kind,
        "tensorParallelDegree": config.tensor_parallel_degree,
        "batchSize": config.setting("batch_size"),
        "maxBatchDelay": config.setting("max_batch_delay"),
        "jobQueueSize": config.setting("job_queue_size"),
        "minWorkers": model.entry.min_workers,
        "maxWorkers": model.entry.max_workers,
        "status": "Healthy" if status.ready else "Unhealthy",
        "workerState": status.state,
        "workerRestarts": status.restarts,
        # LLM engines: which model code serves it (native or transformers) and why
        "architecture": status.model.get("architecture"),
        "modelPath": status.model.get("model_path"),
        "modelPathReason": status.model.get("model_path_reason"),
        "attention": status.model.get("attention"),
        # native engine: FP8 weights and the KV cache's element type
        "quantization": status.model.get("quantization"),
        "workers": [{"id": status.generation, "pid": status.model.get("pid"),
                     "ranks": status.model.get("ranks"),
                     "rankPids": status.model.get("rank_pids"), "status": status.state}],
    }


def _wait(run, request_id: str, timeout: float) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = model_set.poll_result(run, request_id)
        if result is not None:
            return int(result["code"]), result["body"]
        gevent.sleep(POLL_S)
    raise ServingError(504, "ManagementTimeout",
                       f"serve did not finish the request within {timeout:g}s; GET /models "
                       "tells where it stands")


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}={raw!r}: an integer is expected") from None


def register_management_routes(app, router: ModelRouter, load_timeout: float) -> None:
    run = router.run

    @app.get("/models")
    def list_models():
        limit, start = _int_arg("limit", 100), _int_arg("next_page_token", 0)
        if limit <= 0 or start < 0:
            raise bad_request("limit must be positive and next_page_token not negative")
        entries = router.entries()
        page = []
        for entry in entries[start:start + limit]:
            served = router.find(entry.name)
            status = served.client.status.get() if served else None
            page.append({"modelName": entry.name, "modelUrl": entry.url,
                         "status": "Healthy" if status and status.ready else "Unhealthy"})
        answer = {"models": page}
        if start + limit < len(entries):
            answer["nextPageToken"] = str(start + limit)
        return json_response(answer)

    @app.get("/models/<name>")
    def describe_model(name: str):
        model = router.get(name)
        described = describe(model)
        if model.client.status.get().ready:
            described["engineStats"] = model.client.stats()
        return json_response([described])

    @app.post("/models")
    def register_model():
        arguments = {k: v for k, v in request.args.items()}
        if request.is_json and isinstance(request.get_json(silent=True), dict):
            arguments.update({k: str(v) for k, v in request.get_json().items()})
        synchronous = arguments.pop("synchronous", "true").strip().lower() != "false"
        request_id = model_set.submit_control(run, "register", arguments)
        if not synchronous:
            return json_response({"status": "Model registration scheduled"}, 202)
        code, body = _wait(run, request_id, load_timeout)
        return json_response(body, code)

    @app.put("/models/<name>")
    def scale_model(name: str):
        router.get(name)
        arguments = {"name": name, **{k: v for k, v in request.args.items()}}
        code, body = _wait(run, model_set.submit_control(run, "scale", arguments), 30)
        return json_response(body, code)

    @app.delete("/models/<name>")
    def unregister_model(name: str):
        router.get(name)
        code, body = _wait(run, model_set.submit_control(run, "unregister", {"name": name}), 60)
        return json_response(body, code)
