"""Every configuration key the server understands: name, default, meaning and parser.

Server keys have no prefix (`job_queue_size`); engine keys start with `option.`. Engines add
their own option keys with `register`. serving.properties.example lists each key found here
(tests/test_config.py checks it), so a new key gets documented where users look.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import values

SCOPES = ("server", "common", "handler", "native", "deepspeed", "trtllm")


@dataclass(frozen=True)
class Key:
    name: str
    default: str | None
    meaning: str
    parse: values.Parser = values.text
    scope: str = "common"

    @property
    def is_option(self) -> bool:
        return self.name.startswith("option.")


REGISTRY: dict[str, Key] = {}


def register(*keys: Key) -> None:
    for key in keys:
        if key.scope not in SCOPES:
            raise ValueError(f"unknown scope {key.scope!r} for {key.name}")
        REGISTRY[key.name.lower()] = key


def lookup(name: str) -> Key | None:
    return REGISTRY.get(name.lower())


_DJL_ENGINES_NOT_HERE = ("PyTorch", "OnnxRuntime", "TensorFlow", "MXNet", "FasterTransformer",
                         "Rust", "TensorRT", "XGBoost", "LightGBM", "PaddlePaddle", "TFLite")

ENGINE_NAMES = ("Python", "MPI", "DeepSpeed")

register(
    Key("engine", None,
        "Which engine runs the model: Python (handlers and the native LLM engine), MPI "
        "(the same, launched with mpirun; with option.rolling_batch=trtllm: TensorRT-LLM) or "
        "DeepSpeed. Unset: inferred (model.py -> Python handler; option.model_id or "
        "config.json -> native LLM engine).",
        values.choice(*ENGINE_NAMES, *_DJL_ENGINES_NOT_HERE), scope="server"),
    Key("job_queue_size", "1000",
        "Requests accepted but not finished, across the whole server; more get 503 with "
        "Retry-After.", values.integer(1), scope="server"),
    Key("batch_size", "1",
        "Handlers: most requests per handle() call (dynamic batching).",
        values.integer(1, 4096), scope="server"),
    Key("max_batch_delay", "100",
        "Handlers: milliseconds to wait for a batch to fill before calling handle().",
        values.integer(0, 600_000), scope="server"),
    Key("max_request_size", str(64 * 1024 * 1024),
        "Largest request body in bytes; larger bodies get 413.", values.integer(1), scope="server"),
    Key("predict_timeout", "120",
        "Handlers: seconds one handle() call may take. Past it the requests get 504 and the "
        "worker is restarted.", values.number(0, exclusive_minimum=True), scope="server"),
    Key("model_loading_timeout", "1800",
        "Seconds the worker group may take to load the model before start-up fails.",
        values.number(0, exclusive_minimum=True), scope="server"),
    Key("minWorkers", "1", "Accepted for DJL compatibility; one worker group serves the model.",
        values.integer(1), scope="server"),
    Key("maxWorkers", "1", "Accepted for DJL compatibility; one worker group serves the model.",
        values.integer(1), scope="server"),
    Key("max_idle_time", "60", "Accepted for DJL compatibility; workers are never scaled down.",
        values.integer(0), scope="server"),
    Key("install_requirements", "true",
        "pip-install the model dir's requirements.txt before the worker starts.",
        values.boolean, scope="server"),
    Key("frontend_workers", "2",
        "HTTP front-end processes (gunicorn workers, gevent). Each takes any request.",
        values.integer(1, 64), scope="server"),
    Key("restart_limit", "10",
        "Worker group restarts allowed within 10 minutes before serve gives up and exits.",
        values.integer(0), scope="server"),
    Key("graceful_timeout", "30",
        "Seconds SIGTERM waits for requests in flight before serve exits.",
        values.number(0), scope="server"),
    Key("log_level", "info", "Logging level: debug, info, warning or error.",
        values.choice("debug", "info", "warning", "error"), scope="server"),

    Key("option.model_id", None,
        "Where the model is: a local directory, an s3:// prefix or model.tar.gz, or a Hugging "
        "Face model id. Unset: the model directory itself.", values.non_empty_text),
    Key("option.entryPoint", None,
        "Handler module: a .py file in the model dir or an importable module name. Unset: "
        "model.py when present.", values.non_empty_text, scope="handler"),
    Key("option.handler", "handle", "Name of the handler function in the entry point.",
        values.non_empty_text, scope="handler"),
    Key("option.async_mode", "false",
        "Handlers: call the handler's coroutine once per request as it arrives (no batching "
        "wait); it returns an Output or an async generator of Outputs.", values.boolean,
        scope="handler"),
    Key("option.tensor_parallel_degree", None,
        "Ranks (GPUs) one model is split across: an integer or max (every visible GPU). "
        "Unset: 1 for handlers, max for LLM engines.", values.text),
    Key("option.mpi_mode", "false", "Launch the ranks with mpirun instead of torchrun.",
        values.boolean),
    Key("option.mpi_hosts", None,
        "Several nodes under mpirun: host names in rank order, the leader first (host or "
        "host:slots, comma-separated); or the hostfile SERVING_HOSTFILE.", values.non_empty_text),
    Key("option.rolling_batch", "auto",
        "Continuous batching backend: auto, native (aliases: lmi-dist, vllm, scheduler), "
        "trtllm, deepspeed or disable (true / false: auto / disable). Beside a model.py, any "
        "value but disable makes the handler the rolling batch.",
        values.choice("auto", "native", "trtllm", "deepspeed", "disable",
                      aliases={"lmi-dist": "native", "vllm": "native", "scheduler": "native",
                               "true": "auto", "false": "disable"})),
    Key("option.trust_remote_code", "false",
        "Allow model code shipped with a checkpoint (transformers-backed engines only).",
        values.boolean),
    Key("option.revision", None, "Hugging Face revision (branch, tag or commit) of model_id.",
        values.non_empty_text),
    Key("option.task", None, "Hugging Face task name (HF_TASK); text-generation is served.",
        values.text),
    Key("option.dtype", "auto",
        "Weight and activation type: fp32, fp16, bf16 or auto (the checkpoint's type on GPU, "
        "fp32 on CPU).",
        values.choice("auto", "fp32", "fp16", "bf16",
                      aliases={"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"})),
    Key("option.quantize", None,
        "Weight quantization. Native engine: fp8 (per-channel FP8 weights, quantized at load; "
        "FP8 checkpoints need nothing). DeepSpeed: dynamic_int8, smoothquant. "
        "TensorRT-LLM: awq, smoothquant, fp8.", values.text),
    Key("option.enable_stateful_sessions", "true",
        "SageMaker stateful sessions (SessionId on InvokeEndpoint): the built-in LLM handler "
        "opens and closes sessions; handlers get SessionManager.", values.boolean),
    Key("option.sessions_path", None,
        "Where session files live. Unset: /dev/shm/djl_sessions (a temporary directory where "
        "/dev/shm is missing).", values.non_empty_text),
    Key("option.sessions_expiration", "1200", "Seconds a session stays valid after it opens.",
        values.number(0, exclusive_minimum=True)),
    Key("option.output_formatter", None,
        "Response format: json (default), jsonlines (default when stream=true) or sse.",
        values.choice("json", "jsonlines", "sse")),
    Key("option.tool_call_parser", None,
        "How tool_choice=auto reads the model's calls: llama3_json, hermes, mistral or "
        "pythonic. Unset: detected from the chat template (the log says which).",
        values.choice("llama3_json", "hermes", "mistral", "pythonic")),
    Key("option.install_requirements", None, "Same as install_requirements.", values.boolean),
    Key("option.model_loading_timeout", None, "Same as model_loading_timeout.",
        values.number(0, exclusive_minimum=True)),
    Key("option.predict_timeout", None, "Same as predict_timeout.",
        values.number(0, exclusive_minimum=True)),
)


def example_keys() -> list[Key]:
    return sorted(REGISTRY.values(), key=lambda k: (SCOPES.index(k.scope), k.name.lower()))
