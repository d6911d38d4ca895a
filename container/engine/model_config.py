"""What the native engine needs from a Hugging Face config.json, read without transformers.

Reads both spellings of RoPE settings: `rope_theta` + `rope_scaling` (checkpoints on the Hub)
and `rope_parameters` (what transformers 5 writes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StartupError

# architecture name -> (module under engine/models, the family's fixed traits)
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", {}),
    "MistralForCausalLM": ("llama", {}),
    "Qwen2ForCausalLM": ("llama", {"qkv_bias": True}),
    "Qwen3ForCausalLM": ("qwen3", {"qk_norm": True}),
    "MixtralForCausalLM": ("moe", {}),
    "Qwen3MoeForCausalLM": ("moe", {"qk_norm": True}),
    "Qwen2MoeForCausalLM": ("moe", {"qkv_bias": True}),
    "Gemma2ForCausalLM": ("gemma", {}),
    "Gemma3ForCausalLM": ("gemma", {"qk_norm": True}),
    "Phi3ForCausalLM": ("phi3", {}),
}

ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


class NotNativeArchitecture(StartupError):
    """The native engine has no code for this architecture (the service may serve it through
    transformers instead)."""


def layer_windows(raw: dict, num_layers: int) -> list[int | None]:
    """Each layer's sliding window (None: full attention), from `layer_types` when the config
    lists them (transformers 5 writes them), else every layer slides when a window is set
    (Mistral) unless `use_sliding_window` is false (Qwen2/3 keep the key but default it off)."""
    window = raw.get("sliding_window")
    if not window or raw.get("use_sliding_window", True) is False:
        return [None] * num_layers
    types = raw.get("layer_types")
    if types:
        return [int(window) if kind == "sliding_attention" else None for kind in types]
    first_sliding = int(raw.get("max_window_layers", 0)) if "use_sliding_window" in raw else 0
    return [int(window) if i >= first_sliding else None for i in range(num_layers)]


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    torch_dtype: str | None
    sliding_window: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    hidden_act: str = "silu"
    o_bias: bool = False
    module: str = "llama"                  # engine/models/<module>.py holds the family's code
    qk_norm: bool = False                  # RMSNorm per head on q and k (Qwen3)
    layer_windows: list[int | None] = field(default_factory=list)
    moe: dict | None = None                # experts of MoE families (models/moe.py reads it)
    local_rope_theta: float | None = None  # sliding layers' own rotary base (Gemma 3)
    local_rope_scaling: dict | None = None
    attention_scale: float | None = None   # None: head_dim ** -0.5 (Gemma: query_pre_attn_scalar)
    attention_softcap: float | None = None  # cap * tanh(score / cap) (Gemma 2)
    final_softcap: float | None = None     # the same on the logits (Gemma 2)
    # Pipeline parallelism: this stage's layers [first, end); None: all of them (engine/pipeline.py)
    layer_range: tuple[int, int] | None = None

    @property
    def attention_kinds(self) -> list[str]:
        return [f"sliding({w})" if w else "full" for w in self.layer_windows]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StartupError(f"{path} not found: option.model_id must point at a Hugging Face "
                               "checkpoint directory (config.json, tokenizer, *.safetensors)")
        except ValueError as exc:
            raise StartupError(f"{path} is not valid JSON: {exc}")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        architectures = raw.get("architectures") or []
        architecture = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if architecture is None:
            raise NotNativeArchitecture(
                f"architecture {architectures or raw.get('model_type')} is not supported by the "
                f"native engine; supported: {', '.join(SUPPORTED_ARCHITECTURES)} (Llama 2/3/3.1/"
                "3.2, Mistral, Qwen2/2.5/3, Mixtral, Qwen2/3-MoE, Gemma 2/3, Phi-3/4); the service "
                "serves others through transformers")
        hidden_act = raw.get("hidden_activation") or raw.get("hidden_act", "silu")
        if hidden_act not in ACTIVATIONS:
            raise NotNativeArchitecture(f"hidden_act={hidden_act!r} is not supported by the "
                                        f"native engine ({', '.join(ACTIVATIONS)})")
        if raw.get("mlp_bias"):
            raise NotNativeArchitecture("mlp_bias=true is not supported by the native engine")
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        rope = dict(raw.get("rope_parameters") or {})
        if "full_attention" in rope:     # Gemma 3 (transformers 5): one set per layer type
            rope_theta, scaling = _rope(rope["full_attention"], {})
            local_theta, local_scaling = _rope(rope.get("sliding_attention") or {}, {})
        else:
            rope_theta, scaling = _rope(rope, raw)
            local_theta = raw.get("rope_local_base_freq")    # Gemma 3 as the Hub has it
            local_scaling = None
        partial_rotary = float(raw.get("partial_rotary_factor")
                               or rope.get("partial_rotary_factor") or 1.0)
        if scaling is not None or partial_rotary != 1.0:
            # scalings read these from the top level of config.json too (Phi-3)
            scaling = {"rope_type": "default", **(scaling or {}),
                       "partial_rotary_factor": partial_rotary}
            if raw.get("original_max_position_embeddings"):
                scaling.setdefault("original_max_position_embeddings",
                                   int(raw["original_max_position_embeddings"]))
        eos = raw.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        module, traits = SUPPORTED_ARCHITECTURES[architecture]
        num_layers = int(raw["num_hidden_layers"])
        windows = layer_windows(raw, num_layers)
        sliding = max((w for w in windows if w), default=None)
        return cls(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("attention_bias", False)) or traits.get("qkv_bias", False),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            sliding_window=int(sliding) if sliding else None,
            eos_token_ids=[int(e) for e in eos_ids],
            bos_token_id=raw.get("bos_token_id"),
            hidden_act=hidden_act,
            o_bias=bool(raw.get("attention_bias", False)) and architecture != "Qwen2ForCausalLM",
            module=module,
            qk_norm=traits.get("qk_norm", False),
            layer_windows=windows,
            moe=moe_settings(raw) if module == "moe" else None,
            local_rope_theta=float(local_theta) if local_theta else None,
            local_rope_scaling=local_scaling,
            attention_scale=(float(raw["query_pre_attn_scalar"]) ** -0.5
                             if raw.get("query_pre_attn_scalar") else None),
            attention_softcap=raw.get("attn_logit_softcapping") or None,
            final_softcap=raw.get("final_logit_softcapping") or None,
        )


def _rope(params: dict, raw: dict) -> tuple[float, dict | None]:
    """(theta, scaling or None) from `rope_parameters` (transformers 5) or the Hub's
    `rope_theta` + `rope_scaling` (in `raw`)."""
    scaling = raw.get("rope_scaling") or None
    theta = float(raw.get("rope_theta", params.get("rope_theta", 10000.0)))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
    return theta, scaling


def moe_settings(raw: dict) -> dict:
    """Experts and routing of Mixtral (num_local_experts, softmax over the top k) and
    Qwen3-MoE (num_experts, norm_topk_prob, decoder_sparse_step, mlp_only_layers)."""
    experts = int(raw.get("num_local_experts") or raw.get("num_experts"))
    mixtral = "num_local_experts" in raw
    return {
        "num_experts": experts,
        "top_k": int(raw.get("num_experts_per_tok", 2)),
        "expert_intermediate_size": int(raw.get("moe_intermediate_size")
                                        or raw["intermediate_size"]),
        "renormalize": True if mixtral else bool(raw.get("norm_topk_prob", False)),
        "sparse_step": int(raw.get("decoder_sparse_step", 1) or 1),
        "dense_layers": [int(i) for i in raw.get("mlp_only_layers") or []],
        "shared_expert_intermediate_size": int(raw.get("shared_expert_intermediate_size") or 0),
    }
