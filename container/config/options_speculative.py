"""option.speculative_config: speculative decoding of the native engine, in vLLM's JSON shape.

    option.speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                               "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    option.speculative_config={"model": "/opt/ml/draft", "num_speculative_tokens": 3}

A `model` key (or "method": "draft_model") asks for a draft model. Everything else vLLM
accepts (EAGLE / Medusa / MTP heads, draft tensor parallelism, ...) is refused by name, so a
configuration never silently runs without the speculation it asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .engine_options import OptionError, option

MAX_SPECULATIVE_TOKENS = 16
METHODS = ("ngram", "draft_model")
# vLLM's other methods: named so the refusal can say what they are
UNSUPPORTED_METHODS = ("eagle", "eagle3", "medusa", "mlp_speculator", "mtp", "deepseek_mtp",
                       "ernie_mtp", "qwen3_next_mtp", "suffix")
# keys accepted and honoured; draft_tensor_parallel_size only as 1 (the draft runs on rank 0)
KNOWN_KEYS = {"method", "model", "num_speculative_tokens", "prompt_lookup_max",
              "prompt_lookup_min", "draft_tensor_parallel_size", "revision"}
FIX = ('allowed: a JSON object such as {"method": "ngram", "num_speculative_tokens": 4} or '
       '{"model": "<draft dir, s3:// prefix or Hub id>", "num_speculative_tokens": 3}')


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str                         # ngram | draft_model
    num_speculative_tokens: int         # k: tokens proposed per decode step
    prompt_lookup_max: int = 0          # ngram: longest suffix matched
    prompt_lookup_min: int = 0          # ngram: shortest suffix matched
    model: str | None = None            # draft_model: where its checkpoint is
    revision: str | None = None         # draft_model: Hub revision


def _integer(spec: dict, key: str, default: int | None, low: int, high: int) -> int:
    raw = spec.get(key, default)
    if raw is None:
        raise ValueError(f"{key} is required; {FIX}")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"{key} must be an integer, got {raw!r}; allowed {low}..{high}")
    if not low <= raw <= high:
        raise ValueError(f"{key}={raw} is out of range: allowed {low}..{high}")
    return raw


def parse_speculative_config(text: str) -> SpeculativeConfig | None:
    """The option's JSON object -> SpeculativeConfig (None: blank, speculation off)."""
    if not text.strip():
        return None
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON object ({exc.msg}); {FIX}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"must be a JSON object; {FIX}")
    method = spec.get("method")
    if method is None:
        method = "draft_model" if spec.get("model") else None
    if not isinstance(method, str):
        raise ValueError(f"say which method: \"method\": \"ngram\" or a draft \"model\"; {FIX}")
    method = method.strip().lower()
    if method in UNSUPPORTED_METHODS or method.startswith("eagle"):
        raise ValueError(f"method {method!r} is not supported by the native engine (it needs "
                         "trained heads we do not run); allowed: \"ngram\" or a draft \"model\"")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not supported; allowed keys: "
                         f"{', '.join(sorted(KNOWN_KEYS))}")
    k = _integer(spec, "num_speculative_tokens", None, 1, MAX_SPECULATIVE_TOKENS)
    if method == "ngram":
        if spec.get("model"):
            raise ValueError("ngram proposes from the prompt and output, so \"model\" is not "
                             "allowed with it: remove \"model\", or drop \"method\" to use "
                             "the model as a draft")
        high = _integer(spec, "prompt_lookup_max", 4, 1, 64)
        low = _integer(spec, "prompt_lookup_min", 1, 1, 64)
        if low > high:
            raise ValueError(f"prompt_lookup_min={low} is above prompt_lookup_max={high}; "
                             "allowed: prompt_lookup_min <= prompt_lookup_max")
        return SpeculativeConfig("ngram", k, prompt_lookup_max=high, prompt_lookup_min=low)
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("draft_model needs \"model\"; allowed: the draft checkpoint (a "
                         "folder, s3:// prefix or Hub id) sharing the target's tokenizer")
    for key in ("prompt_lookup_max", "prompt_lookup_min"):
        if key in spec:
            raise ValueError(f"{key} is an ngram setting, not allowed with a draft model: "
                             "remove it")
    if spec.get("draft_tensor_parallel_size", 1) != 1:
        raise ValueError("the draft model runs on one rank; allowed: "
                         "draft_tensor_parallel_size 1 or left out")
    revision = spec.get("revision")
    return SpeculativeConfig("draft_model", k, model=model.strip(),
                             revision=str(revision) if revision else None)


@dataclass
class SpeculativeOptions:
    speculative_config: SpeculativeConfig | None = option(
        "speculative_config", "",
        "Speculative decoding, a JSON object in vLLM's shape: {\"method\": \"ngram\", "
        "\"num_speculative_tokens\": k, \"prompt_lookup_max\": 4, \"prompt_lookup_min\": 1} or "
        "{\"model\": \"<draft checkpoint>\", \"num_speculative_tokens\": k} (k 1..16). "
        "Blank: off.", parse_speculative_config)

    def check_speculative(self) -> None:
        spec = self.speculative_config
        if spec is None:
            return
        raw = json.dumps({"method": spec.method, "num_speculative_tokens":
                          spec.num_speculative_tokens})
        if getattr(self, "pipeline_parallel_degree", 1) > 1:
            raise OptionError("speculative_config", raw,
                              "speculative decoding runs without pipeline parallelism: set "
                              "option.pipeline_parallel_degree=1 or remove "
                              "option.speculative_config")
        if getattr(self, "enable_lora", False):
            raise OptionError("speculative_config", raw,
                              "speculative decoding is not combined with LoRA adapters yet: "
                              "set option.enable_lora=false or remove option.speculative_config")

