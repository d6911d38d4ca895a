"""Importing TensorRT-LLM, or saying in one line why it cannot be used here.

The TensorRT-LLM wheel and its TensorRT libraries come with NVIDIA's TensorRT-LLM image (see
docker/Dockerfile.trtllm); everywhere else `serve` stops at start with one line naming the
missing package and the native engine as the alternative.
"""

from __future__ import annotations

import importlib
import runpy
from dataclasses import dataclass
from types import ModuleType

from ..errors import StartupError

PACKAGE = "tensorrt_llm"
ALTERNATIVE = ("use the TensorRT-LLM image (docker/Dockerfile.trtllm), or serve with the native "
               "engine: drop option.rolling_batch=trtllm (or set option.rolling_batch=auto)")
# The classes the adapter uses, all exported by tensorrt_llm.llmapi.
LLMAPI_NAMES = ("LLM", "SamplingParams", "BuildConfig", "KvCacheConfig", "SchedulerConfig",
                "CapacitySchedulerPolicy", "QuantConfig", "QuantAlgo", "CalibConfig",
                "MpiCommSession")
# Ranks 1..N-1 serve TensorRT-LLM's MPI worker pool with this module (trtllm-llmapi-launch's).
WORKER_NODE_MODULE = "tensorrt_llm.llmapi.mgmn_worker_node"


@dataclass(frozen=True)
class Runtime:
    version: str
    api: ModuleType          # tensorrt_llm.llmapi: BuildConfig, KvCacheConfig, ...
    LLM: type                # the TensorRT-engine LLM class

    def __getattr__(self, name):
        return getattr(self.api, name)

    def serve_worker_rank(self) -> None:
        """Ranks other than 0: run TensorRT-LLM's MPI worker until rank 0's session ends."""
        runpy.run_module(WORKER_NODE_MODULE, run_name="__main__")


def load_runtime(importer=importlib.import_module) -> Runtime:
    try:
        package = importer(PACKAGE)
        api = importer(f"{PACKAGE}.llmapi")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == PACKAGE:
            raise StartupError(
                f"engine=MPI with option.rolling_batch=trtllm runs TensorRT-LLM, but the Python "
                f"package {PACKAGE} is not installed here: {ALTERNATIVE}") from None
        raise _broken(exc) from None
    except (ImportError, OSError) as exc:       # e.g. libnvinfer or libcuda missing
        raise _broken(exc) from None
    missing = [name for name in LLMAPI_NAMES if not hasattr(api, name)]
    version = str(getattr(package, "__version__", "unknown"))
    if missing:
        raise StartupError(
            f"{PACKAGE} {version} lacks {', '.join(missing)} in {PACKAGE}.llmapi (this adapter "
            f"needs TensorRT-LLM's LLM API, 0.17 or later): {ALTERNATIVE}")
    return Runtime(version, api, _engine_llm_class(importer, api))


def _engine_llm_class(importer, api: ModuleType) -> type:
    # From 1.0 on tensorrt_llm.LLM is the PyTorch backend; the TensorRT-engine LLM moved here.
    try:
        return importer(f"{PACKAGE}._tensorrt_engine").LLM
    except (ImportError, AttributeError):
        return api.LLM


def _broken(exc: BaseException) -> StartupError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return StartupError(f"the Python package {PACKAGE} is installed but cannot be imported "
                        f"({type(exc).__name__}: {detail}): check the CUDA and TensorRT "
                        f"libraries of this image, or {ALTERNATIVE}")


def device_signature() -> str:
    """The GPU an engine is compiled for (engines do not move between GPU models)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"{torch.cuda.get_device_name(0)} sm{major}{minor}"
    except Exception:   # noqa: BLE001 - no GPU information is still a usable key part
        pass
    return "no-gpu"
