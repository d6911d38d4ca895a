"""serving.properties + environment -> one validated ServingConfig."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import StartupError
from . import keys
from .environment import canonical_key, from_environment
from .properties import PropertiesSyntaxError, parse_properties
from . import options_native  # noqa: F401  (registers the shared engine keys first)
from . import options_deepspeed, options_trtllm
from .engine_options import OptionError

PROPERTIES_FILE = "serving.properties"
ENGINE_OPTION_CLASSES = {
    "native": options_native.NativeOptions,
    "deepspeed": options_deepspeed.DeepSpeedOptions,
    "trtllm": options_trtllm.TrtLlmOptions,
}


@dataclass
class ServingConfig:
    model_dir: str
    model_name: str
    engine: str                      # as DJL names it: Python, MPI or DeepSpeed
    engine_kind: str                 # handler | native | deepspeed | trtllm
    launcher: str                    # python | torchrun | mpirun
    tensor_parallel_degree: int
    gpu_count: int
    server: dict[str, object]        # server keys, parsed, defaults filled in
    options: dict[str, str]          # option.* keys with the prefix stripped, as written
    sources: dict[str, str] = field(default_factory=dict)

    def setting(self, name: str):
        return self.server[name]

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServingConfig":
        return cls(**json.loads(text))


def _describe(key: str, sources: dict[str, str]) -> str:
    return f"{key} (from {sources.get(key, 'defaults')})"


def _invalid(key: str, value: str, reason: str, sources: dict[str, str]) -> StartupError:
    return StartupError(f"invalid {_describe(key, sources)} = {value!r}: {reason}")


def read_properties(model_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    path = model_dir / PROPERTIES_FILE
    if not path.is_file():
        return {}, {}
    try:
        raw = parse_properties(path.read_text(encoding="utf-8"))
    except (PropertiesSyntaxError, UnicodeDecodeError) as exc:
        raise StartupError(f"{path} is not a valid properties file: {exc}") from None
    values, sources = {}, {}
    for name, value in raw.items():
        key = canonical_key(name)
        values[key] = value
        sources[key] = str(path)
    return values, sources


def count_gpus(env: Mapping[str, str]) -> int:
    """GPUs this server may use, without importing torch (serve starts fast)."""
    declared = env.get("SM_NUM_GPUS", "").strip()
    if declared.isascii() and declared.isdigit():       # not int()'s other digits, e.g. "²"
        return int(declared)
    devices = [p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        listed = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return min(len(listed), len(devices))
    return len(devices)


def _parse_server(values: dict[str, str], sources: dict[str, str]) -> dict[str, object]:
    server: dict[str, object] = {}
    for key in keys.REGISTRY.values():
        if key.scope != "server":
            continue
        raw = values.get(key.name, key.default)
        if raw is None:
            server[key.name] = None
            continue
        try:
            server[key.name] = key.parse(raw)
        except ValueError as exc:
            raise _invalid(key.name, raw, str(exc), sources) from None
    # option.* spellings of server settings, as LMI accepts them
    for name in ("install_requirements", "model_loading_timeout", "predict_timeout"):
        raw = values.get(f"option.{name}")
        if raw is not None and name not in values:
            try:
                server[name] = keys.lookup(f"option.{name}").parse(raw)
            except ValueError as exc:
                raise _invalid(f"option.{name}", raw, str(exc), sources) from None
    return server


def _validate_common_options(values: dict[str, str], sources: dict[str, str]) -> None:
    for name, raw in values.items():
        key = keys.lookup(name)
        if key is None or key.scope == "server" or not key.is_option:
            continue
        if key.scope in ("common", "handler"):
            try:
                key.parse(raw)
            except ValueError as exc:
                raise _invalid(key.name, raw, str(exc), sources) from None


def only_formatters(model_py: Path, handler_name: str) -> bool:
    """True for a model.py of LMI custom formatters (@input_formatter / @output_formatter)
    with no handler of its own: the built-in engine serves the model and uses them. Read with
    ast, so no user code runs while the configuration is read."""
    import ast

    try:
        tree = ast.parse(model_py.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = {f.name for f in functions}
    if names & {handler_name, "model_fn", "predict_fn"}:
        return False

    def marked(function) -> bool:
        for decorator in function.decorator_list:
            name = getattr(decorator, "id", None) or getattr(decorator, "attr", None)
            if name in ("input_formatter", "output_formatter"):
                return True
        return False
    return any(marked(f) for f in functions)


def _infer_engine_kind(model_dir: Path, values: dict[str, str], engine: str | None) -> str:
    rolling = keys.lookup("option.rolling_batch").parse(values.get("option.rolling_batch", "auto"))
    entry_point = values.get("option.entryPoint")
    model_py = model_dir / "model.py"
    formatters_only = (not entry_point and model_py.is_file()
                       and only_formatters(model_py, values.get("option.handler", "handle")))
    if (entry_point or model_py.is_file()) and not formatters_only:
        return "handler"
    if engine == "DeepSpeed" or rolling == "deepspeed":
        return "deepspeed"
    if rolling == "trtllm":
        return "trtllm"
    if values.get("option.model_id") or (model_dir / "config.json").is_file():
        return "native"
    raise StartupError(
        f"nothing to serve in {model_dir}: add a model.py handler, a serving.properties with "
        f"option.model_id, or a Hugging Face checkpoint (config.json); or set HF_MODEL_ID")


def _tensor_parallel_degree(raw: str | None, kind: str, gpus: int,
                            sources: dict[str, str]) -> int:
    if raw is None:
        raw = "1" if kind == "handler" else "max"
    text = raw.strip().lower()
    if text == "max":
        return max(gpus, 1)
    if text.isascii() and text.isdigit() and int(text) >= 1:
        degree = int(text)
        if gpus and degree > gpus:
            raise StartupError(
                f"option.tensor_parallel_degree={degree} (from "
                f"{sources.get('option.tensor_parallel_degree')}) but only {gpus} GPU(s) are "
                f"visible: lower it or use 'max'")
        return degree
    raise _invalid("option.tensor_parallel_degree", raw,
                   "allowed: a positive integer or max", sources)


def _pipeline_degree(values: dict[str, str], kind: str) -> int:
    """Stages of option.pipeline_parallel_degree (the native engine's; validated there)."""
    raw = values.get("option.pipeline_parallel_degree", "1").strip()
    degree = int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else 1
    if degree > 1 and kind != "native":
        raise StartupError(f"option.pipeline_parallel_degree={degree} needs the native LLM "
                           f"engine (this model is served by the {kind} engine): remove it")
    return degree


def _launcher(engine: str, kind: str, values: dict[str, str], tp: int) -> str:
    mpi = engine in ("MPI", "DeepSpeed") or kind in ("trtllm", "deepspeed")
    if keys.lookup("option.mpi_mode").parse(values.get("option.mpi_mode", "false")):
        mpi = True
    if mpi:
        if not shutil.which("mpirun"):
            raise StartupError(
                f"engine={engine} launches its ranks with mpirun, which is not on PATH: install "
                "Open MPI (apt-get install openmpi-bin) or set engine=Python")
        return "mpirun"
    return "torchrun" if tp > 1 else "python"


def load_config(model_dir: str | os.PathLike, env: Mapping[str, str] | None = None) -> ServingConfig:
    env = os.environ if env is None else env
    model_dir = Path(model_dir).expanduser()
    from_env = from_environment(env)
    if not model_dir.is_dir() and "option.model_id" not in from_env:
        raise StartupError(
            f"model directory {model_dir} does not exist: pass --model-dir DIR or set "
            "HF_MODEL_ID / OPTION_MODEL_ID")
    model_dir = model_dir.resolve() if model_dir.is_dir() else model_dir

    file_values, sources = read_properties(model_dir) if model_dir.is_dir() else ({}, {})
    values: dict[str, str] = {}
    for key, (value, source) in from_env.items():
        values[key] = value
        sources[key] = f"environment variable {source}"
    for key, value in file_values.items():  # the file wins
        values[key] = value
        sources[key] = str(model_dir / PROPERTIES_FILE)

    server = _parse_server(values, sources)
    _validate_common_options(values, sources)
    engine = server["engine"]
    if engine and engine not in keys.ENGINE_NAMES:
        raise StartupError(
            f"engine={engine} (from {sources.get('engine')}) is not available in this container: "
            f"use engine=Python (handlers and the native LLM engine), MPI or DeepSpeed")
    kind = _infer_engine_kind(model_dir, values, engine)
    gpus = count_gpus(env)
    tp = _tensor_parallel_degree(values.get("option.tensor_parallel_degree"), kind, gpus, sources)
    options = {k[len("option."):]: v for k, v in values.items() if k.startswith("option.")}
    if kind in ENGINE_OPTION_CLASSES:
        try:
            ENGINE_OPTION_CLASSES[kind].from_options(options)
        except OptionError as exc:
            raise _invalid("option." + exc.name, exc.value, exc.reason, sources) from None
    if kind in ("deepspeed", "trtllm") and options.get("speculative_config", "").strip():
        raise StartupError(f"option.speculative_config (from "
                           f"{sources.get('option.speculative_config')}) is implemented by the "
                           f"native engine, not the {kind} engine: remove it, or serve with the "
                           "native engine (no engine=DeepSpeed / option.rolling_batch=trtllm)")
    return ServingConfig(
        model_dir=str(model_dir),
        model_name=_model_name(model_dir, values),
        engine=engine or ("MPI" if kind == "trtllm" else "Python"),
        engine_kind=kind,
        launcher=_launcher(engine or "Python", kind, values, tp * _pipeline_degree(values, kind)),
        tensor_parallel_degree=tp,
        gpu_count=gpus,
        server=server,
        options=options,
        sources=sources,
    )


def _model_name(model_dir: Path, values: dict[str, str]) -> str:
    name = values.get("option.model_name") or model_dir.name or "model"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
