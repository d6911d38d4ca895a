"""Map environment variables onto configuration keys, as DJL Serving and LMI do.

Precedence, highest first: serving.properties, then OPTION_* / SERVING_* variables, then the
names SageMaker, Hugging Face and TGI users know (HF_MODEL_ID, SAGEMAKER_*, MAX_BATCH_SIZE...).
"""

from __future__ import annotations

from typing import Mapping

from . import keys

# Alias variables: env name -> (key, converter). Lower priority than OPTION_* / SERVING_*.
_MIB = 1024 * 1024
ALIASES: dict[str, tuple[str, object]] = {
    "HF_MODEL_ID": ("option.model_id", None),
    "HF_REVISION": ("option.revision", None),
    "HF_TASK": ("option.task", None),
    "TENSOR_PARALLEL_DEGREE": ("option.tensor_parallel_degree", None),
    "SAGEMAKER_STARTUP_TIMEOUT": ("model_loading_timeout", None),
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": ("predict_timeout", None),
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": ("max_request_size", lambda v: _mib_to_bytes(v)),
    "SAGEMAKER_NUM_MODEL_WORKERS": ("maxWorkers", None),
    "HF_MODEL_QUANTIZE": ("option.quantize", None),
    "HF_MODEL_TRUST_REMOTE_CODE": ("option.trust_remote_code", None),
    "MAX_CONCURRENT_REQUESTS": ("job_queue_size", None),
    "MAX_BATCH_SIZE": ("option.max_rolling_batch_size", None),
    "MAX_BATCH_PREFILL_TOKENS": ("option.max_rolling_batch_prefill_tokens", None),
    "CUDA_MEMORY_FRACTION": ("option.gpu_memory_utilization", None),
}


def _mib_to_bytes(value: str) -> str:
    try:
        return str(int(float(value) * _MIB))
    except (ValueError, OverflowError):     # "abc", "nan", "1e309"
        return value  # left as is: the key's parser reports it with the variable's name


def _squash(name: str) -> str:
    return name.lower().replace("_", "")


def canonical_key(name: str) -> str:
    """The registered spelling of a key (`option.entrypoint` -> `option.entryPoint`)."""
    known = keys.lookup(name)
    if known:
        return known.name
    prefix, _, rest = name.partition(".")
    target = _squash(name)
    for key in keys.REGISTRY.values():
        if _squash(key.name) == target:
            return key.name
    return f"{prefix}.{rest}" if rest else name


def from_environment(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Return {key: (value, source)} for every configuration key the environment sets."""
    direct: dict[str, tuple[str, str]] = {}
    aliased: dict[str, tuple[str, str]] = {}
    for var, value in env.items():
        if var == "OPTION_ENGINE":
            direct["engine"] = (value, var)
        elif var.startswith("OPTION_") and len(var) > 7:
            direct[canonical_key("option." + var[7:].lower())] = (value, var)
        elif var.startswith("SERVING_") and len(var) > 8:
            name = var[8:].lower()
            if name in _NOT_KEYS:
                continue
            direct[canonical_key(name)] = (value, var)
        elif var in ALIASES:
            key, convert = ALIASES[var]
            aliased[key] = (convert(value) if convert else value, var)
    return {**aliased, **direct}


# SERVING_* variables that are not configuration keys (read elsewhere).
_NOT_KEYS = {"download_dir", "cache_dir", "opts"}
