"""Write serving.properties.example from the key registry: `python -m container.config.example`."""

from __future__ import annotations

import sys
import textwrap

from . import keys, loader  # noqa: F401  (loader imports every engine's option classes)

TITLES = {
    "server": "Server settings (no prefix; environment: SERVING_<KEY>)",
    "common": "Options for every engine (environment: OPTION_<KEY>)",
    "handler": "Custom handlers (model.py)",
    "native": "Native LLM engine",
    "deepspeed": "engine=DeepSpeed",
    "trtllm": "engine=MPI with option.rolling_batch=trtllm (TensorRT-LLM)",
}

HEADER = """\
# serving.properties: every key this server reads, with its default and meaning.
# Java .properties syntax (# comments, key=value or key: value, \\ continues a line);
# trailing spaces are trimmed. Keys without a default are commented out: set them as needed.
# Environment variables map onto keys: OPTION_FOO_BAR -> option.foo_bar, SERVING_FOO -> foo,
# plus HF_MODEL_ID, HF_REVISION, HF_TASK, TENSOR_PARALLEL_DEGREE, SM_NUM_GPUS, SAGEMAKER_*,
# HF_MODEL_QUANTIZE, HF_MODEL_TRUST_REMOTE_CODE, MAX_CONCURRENT_REQUESTS, MAX_BATCH_SIZE,
# MAX_BATCH_PREFILL_TOKENS, CUDA_MEMORY_FRACTION. The file wins over the environment.
"""


def render() -> str:
    out = [HEADER]
    for scope in keys.SCOPES:
        members = [k for k in keys.example_keys() if k.scope == scope]
        if not members:
            continue
        out.append(f"\n# ---- {TITLES[scope]} ----\n")
        for key in members:
            out.append("\n")
            for line in textwrap.wrap(key.meaning, 94):
                out.append(f"# {line}\n")
            if key.default is None:
                out.append(f"# {key.name}=\n")
            else:
                out.append(f"# {key.name}={key.default}\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
