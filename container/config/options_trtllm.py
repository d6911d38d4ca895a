"""Options of TensorRT-LLM (engine=MPI, option.rolling_batch=trtllm). Filled in by the adapter."""

from __future__ import annotations

from dataclasses import dataclass

from .engine_options import EngineOptions, existing


@dataclass
class TrtLlmOptions(EngineOptions):
    dtype: str = existing("dtype")
    quantize: str | None = existing("quantize")
