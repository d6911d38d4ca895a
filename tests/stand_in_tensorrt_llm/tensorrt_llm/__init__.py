"""STAND-IN for NVIDIA's tensorrt_llm package (see ../README.md). Not TensorRT-LLM.

Put tests/stand_in_tensorrt_llm on PYTHONPATH to run the TensorRT-LLM adapter where the real
library cannot be installed. It records calls, mirrors the LLM API's names, and streams the
prompt's tokens back; it compiles and computes nothing.
"""

__version__ = "0.0.0+stand-in"
STAND_IN = True

from .llmapi import (LLM, BuildConfig, CalibConfig, CapacitySchedulerPolicy,  # noqa: E402
                     KvCacheConfig, MpiCommSession, QuantAlgo, QuantConfig, SamplingParams,
                     SchedulerConfig)

__all__ = ["LLM", "BuildConfig", "CalibConfig", "CapacitySchedulerPolicy", "KvCacheConfig",
           "MpiCommSession", "QuantAlgo", "QuantConfig", "SamplingParams", "SchedulerConfig"]
