"""serving.properties -> the arguments of `deepspeed.init_inference`, as DJL built them.

Also decides how DeepSpeed runs the model: kernel injection (DeepSpeed's fused CUDA kernels
replace whole transformer layers) where DeepSpeed has them for the architecture and there is a
GPU, AutoTP (DeepSpeed splits the model's own Linear layers across ranks) otherwise. Pure
functions of the options: no deepspeed import, so they are tested without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.options_deepspeed import DeepSpeedOptions
from ..errors import StartupError

# The model types DJL switched kernel injection on for (its OPTIMIZED_MODEL_TYPES), causal LMs
# only: DeepSpeed's injection kernels for these are the ones DJL served with.
KERNEL_INJECTION_MODEL_TYPES = ("bloom", "gpt2", "gpt_neo", "gpt_neox", "gptj", "opt")


@dataclass
class InferenceSetup:
    init_args: dict                  # keyword arguments of deepspeed.init_inference (config=)
    kernel_injection: bool
    load_dtype: torch.dtype          # the dtype transformers loads the weights in
    checkpoint_json: Path | None     # option.checkpoint: weights come from DeepSpeed's loader
    why: str                         # one line for the log: which mode and why

    @property
    def tp_size(self) -> int:
        return int(_tp_size_in(self.init_args) or 1)

    @property
    def mode(self) -> str:
        return "kernel injection" if self.kernel_injection else "AutoTP"


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def injection_blocker(transformers_version: int) -> str | None:
    """Why DeepSpeed's injected layers cannot run under this transformers, or None.

    They were written against transformers 4's layer interface (return a tuple, take the past
    key/values as tuples). Transformers 5 chains layers on the bare hidden states, so the second
    layer receives the first one's tuple: seen on an H200 with an OPT model, DeepSpeed 0.19.8
    and transformers 5.17 ('tuple' object has no attribute 'size').
    """
    if transformers_version >= 5:
        return (f"DeepSpeed's injected layers speak transformers 4's layer interface and "
                f"transformers {transformers_version}.x is installed")
    return None


def choose_kernel_injection(device_type: str, model_type: str,
                            transformers_version: int) -> tuple[bool, str]:
    if device_type != "cuda":
        return False, "AutoTP: DeepSpeed's injection kernels are CUDA kernels and this is a CPU"
    if model_type not in KERNEL_INJECTION_MODEL_TYPES:
        return False, (f"AutoTP: DeepSpeed kernel injection (as DJL used it) covers "
                       f"{', '.join(KERNEL_INJECTION_MODEL_TYPES)}, not {model_type}")
    blocker = injection_blocker(transformers_version)
    if blocker:
        return False, f"AutoTP: {blocker}"
    return True, f"kernel injection: DeepSpeed has fused CUDA kernels for {model_type}"


def _in_model_dir(path: str, model_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else model_dir / candidate


def _read_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StartupError(f"option.{key}={path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise StartupError(f"option.{key}={path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StartupError(f"option.{key}={path} must hold a JSON object")
    return data


def _tp_size_in(config: dict) -> int | None:
    for section in ("tensor_parallel", "tp"):
        value = config.get(section)
        if isinstance(value, dict) and value.get("tp_size") is not None:
            return int(value["tp_size"])
    return int(config["mp_size"]) if config.get("mp_size") is not None else None


def _from_options(options: DeepSpeedOptions, tp: int, model_dir: Path) -> dict:
    """DJL's ds_config, key for key."""
    args = {
        "tensor_parallel": {"tp_size": tp},
        "enable_cuda_graph": options.enable_cuda_graph,
        "triangular_masking": options.triangular_masking,
        "return_tuple": options.return_tuple,
        "training_mp_size": options.training_mp_size,
        "max_tokens": options.max_tokens,
    }
    if options.save_mp_checkpoint_path:
        args["save_mp_checkpoint_path"] = str(
            _in_model_dir(options.save_mp_checkpoint_path, model_dir))
    if options.checkpoint:
        args["checkpoint"] = str(_in_model_dir(options.checkpoint, model_dir))
        args["base_dir"] = str(model_dir)
    return args


def _from_file(options: DeepSpeedOptions, tp: int, model_dir: Path) -> dict:
    path = _in_model_dir(options.deepspeed_config_path, model_dir)
    args = _read_json(path, "deepspeed_config_path")
    declared = _tp_size_in(args)
    if declared is not None and declared != tp:
        raise StartupError(
            f"option.deepspeed_config_path={path} sets tensor_parallel.tp_size={declared} but "
            f"the server starts {tp} rank(s) (option.tensor_parallel_degree={tp}): make them equal")
    if declared is None:
        args["tensor_parallel"] = {**args.get("tensor_parallel", {}), "tp_size": tp}
    if args.get("checkpoint") and not args.get("base_dir"):
        args["base_dir"] = str(model_dir)
    return args


def build_setup(options: DeepSpeedOptions, tp: int, model_dir: Path, device_type: str,
                model_type: str, dtype: torch.dtype,
                transformers_version: int | None = None) -> InferenceSetup:
    """Every init_inference argument, or a StartupError saying what cannot work here.
    transformers_version: the installed major version unless given."""
    if transformers_version is None:
        transformers_version = transformers_major()
    args = (_from_file if options.deepspeed_config_path else _from_options)(options, tp, model_dir)
    injection = args.pop("replace_with_kernel_inject", args.pop("kernel_inject", None))
    if injection is None:
        injection, why = choose_kernel_injection(device_type, model_type, transformers_version)
    else:
        injection = bool(injection)
        why = f"{'kernel injection' if injection else 'AutoTP'}: set in option.deepspeed_config_path"
    if options.quantize == "dynamic_int8":
        dtype = torch.int8                  # DeepSpeed quantizes the weights to int8 itself
    dtype = _torch_dtype(args.setdefault("dtype", dtype))
    if dtype == torch.int8 and not injection:
        raise StartupError(
            f"{'option.quantize=dynamic_int8' if options.quantize else 'dtype int8'} runs on "
            "DeepSpeed's int8 CUDA kernels, which need kernel injection (a GPU and a model type "
            f"among {', '.join(KERNEL_INJECTION_MODEL_TYPES)}); here: {why.split(': ', 1)[1]}. "
            "Remove it")
    if injection and device_type != "cuda":
        raise StartupError("DeepSpeed kernel injection needs a CUDA GPU: set "
                           "replace_with_kernel_inject to false in option.deepspeed_config_path")
    blocker = injection_blocker(transformers_version) if injection else None
    if blocker:
        raise StartupError(f"replace_with_kernel_inject is set in option.deepspeed_config_path, "
                           f"but {blocker}: set it to false (AutoTP), or build the image with "
                           f"transformers<5")
    if args.get("enable_cuda_graph"):
        raise StartupError("enable_cuda_graph in option.deepspeed_config_path: DeepSpeed replays "
                           "a CUDA graph for one fixed input shape; text generation changes "
                           "shapes every step: remove it")
    if args.get("save_mp_checkpoint_path") and not injection:
        raise StartupError(
            "option.save_mp_checkpoint_path writes DeepSpeed's tensor-parallel shard format, "
            f"which only kernel injection can load again, and this model runs with {why}: "
            "remove it (AutoTP reads the Hugging Face checkpoint directly)")
    checkpoint = Path(args["checkpoint"]) if isinstance(args.get("checkpoint"), str) else None
    if checkpoint is not None:
        _check_checkpoint(checkpoint, injection)
    args["replace_with_kernel_inject"] = injection
    # int8 weights are quantized by DeepSpeed from fp16 ones (as DJL loaded them)
    load_dtype = torch.float16 if dtype == torch.int8 else dtype
    return InferenceSetup(args, injection, load_dtype, checkpoint, why)


_DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
                "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "int8": torch.int8}


def _torch_dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise StartupError(f"dtype {value!r} in option.deepspeed_config_path: allowed fp32, fp16, "
                           "bf16 or int8")
    return _DTYPE_NAMES[name]


def _check_checkpoint(path: Path, injection: bool) -> None:
    description = _read_json(path, "checkpoint")
    if not description.get("checkpoints"):
        raise StartupError(f"option.checkpoint={path} lists no 'checkpoints' files")
    if description.get("parallelization") == "tp" and not injection:
        raise StartupError(
            f"option.checkpoint={path} holds DeepSpeed tensor-parallel shards "
            "(parallelization=tp), which only kernel injection loads; AutoTP needs a checkpoint "
            "list of whole state dicts (type ds_model) or the Hugging Face checkpoint itself")
