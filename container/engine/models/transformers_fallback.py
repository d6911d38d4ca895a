"""Any other AutoModelForCausalLM (Falcon, GPT-2, OPT ...), run by transformers' own modeling
code, with its attention swapped for ours over the paged KV cache.

transformers lets a model's attention be replaced by name (AttentionInterface); ours writes the
new keys and values into our paged cache and attends with the same backends as the native
models. So the scheduler, block manager (preemption, chunked prefill, prefix cache), sampler,
front end and metrics are the native engine's, unchanged: only the layers are transformers'.
A step's tokens go in as one packed row [1, T] with their own position ids; every attention
call (one per layer, in order) finds its sequences through the step's AttentionMetadata.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ...errors import StartupError
from ..kernels import gpu_kernels
from ..layers.attention import TorchPagedAttention, TritonPagedAttention, write_kv
from ..model_config import ModelConfig

log = logging.getLogger(__name__)

ATTENTION_NAME = "serve_paged"


class _Step:
    """What the attention calls of the forward in progress need (one forward at a time)."""
    meta = None
    kv_caches: list | None = None
    layer = 0
    probe: list | None = None      # while probing: each layer's (kv_heads, head_dim, window)


_STEP = _Step()


def _paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     sliding_window=None, softcap=None, **kwargs):
    """transformers' attention signature: query [1, H, T, D], key/value [1, Hk, T, D] ->
    ([1, T, H, D], None)."""
    if softcap:
        raise StartupError("this model soft-caps attention logits, which the transformers path "
                           "does not do yet")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))       # [T, heads, D]
    if _STEP.probe is not None:
        _STEP.probe.append((k.shape[1], k.shape[2], sliding_window))
        return torch.zeros_like(q).unsqueeze(0), None
    layer = _STEP.layer
    _STEP.layer += 1
    kv_cache, meta = _STEP.kv_caches[layer], _STEP.meta
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    if gpu_kernels(q):
        write_kv(kv_cache, k.contiguous(), v.contiguous(), meta.slot_mapping)
        out = TritonPagedAttention(scale, sliding_window)(q.contiguous(), kv_cache, meta)
    else:
        out = TorchPagedAttention(scale, sliding_window)(q, k, v, kv_cache, meta)
    return out.unsqueeze(0), None


class TransformersLayerView:
    """What the runner asks of an attention layer."""

    def __init__(self, num_kv_heads: int, window: int | None):
        self.num_kv_heads = num_kv_heads
        self.window = window

    @property
    def kind(self) -> str:
        return f"sliding({self.window})" if self.window else "full"


class TransformersCausalLM(nn.Module):
    def __init__(self, hf_model, layers: list[TransformersLayerView]):
        super().__init__()
        self.hf = hf_model
        self.base = hf_model.base_model
        self.head = hf_model.get_output_embeddings()
        self.layers = layers

    @property
    def attention_layers(self) -> list[TransformersLayerView]:
        return self.layers

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        _STEP.meta, _STEP.kv_caches, _STEP.layer = meta, kv_caches, 0
        try:
            out = self.base(input_ids=input_ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
                            use_cache=False)
        finally:
            _STEP.meta = _STEP.kv_caches = None
        if _STEP.layer != len(kv_caches):
            raise RuntimeError(f"{_STEP.layer} attention calls for {len(kv_caches)} layers")
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float()


def _architectures(model_dir) -> str:
    import json

    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    return ", ".join(raw.get("architectures") or [str(raw.get("model_type"))])


def load_transformers_model(model_dir: str | Path, dtype: torch.dtype, device: torch.device,
                            trust_remote_code: bool) -> tuple[TransformersCausalLM, ModelConfig]:
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register(ATTENTION_NAME, _paged_attention)
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=ATTENTION_NAME,
            trust_remote_code=trust_remote_code).to(device).eval()
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise StartupError(
                f"architecture {_architectures(model_dir)} has no native code here and the "
                "checkpoint ships its own (auto_map), which runs only with "
                "option.trust_remote_code=true: set it if you trust that code") from None
        raise StartupError(
            f"transformers cannot swap in paged attention for this model ({exc}); serve it "
            "with a model.py handler or engine=DeepSpeed") from None
    text = hf.config.get_text_config()
    if getattr(text, "alibi", False):
        raise StartupError("ALiBi models (e.g. Falcon with alibi=true) add a bias the paged "
                           "attention of the transformers path does not apply yet: serve it "
                           "with a model.py handler or engine=DeepSpeed")
    _STEP.probe = []
    try:
        with torch.no_grad():
            hf.base_model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                          position_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                          use_cache=False)
        probe = _STEP.probe
    finally:
        _STEP.probe = None
    if not probe or len({(h, d) for h, d, _ in probe}) != 1:
        raise StartupError(f"{type(hf).__name__} does not route its attention through "
                           "transformers' attention interface in a way the paged cache can "
                           "hold: serve it with a model.py handler or engine=DeepSpeed")
    kv_heads, head_dim = probe[0][0], probe[0][1]
    eos = getattr(hf.generation_config, "eos_token_id", None) or text.eos_token_id
    config = ModelConfig(
        architecture=type(hf).__name__, vocab_size=int(text.vocab_size),
        hidden_size=int(text.hidden_size),
        intermediate_size=int(getattr(text, "intermediate_size", None)
                              or getattr(text, "ffn_dim", None) or 4 * text.hidden_size),
        num_layers=len(probe), num_heads=int(text.num_attention_heads), num_kv_heads=kv_heads,
        head_dim=head_dim, rms_norm_eps=1e-6, rope_theta=0.0, rope_scaling=None,
        max_position_embeddings=int(getattr(text, "max_position_embeddings", 0) or 2048),
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)), qkv_bias=False,
        torch_dtype=str(getattr(text, "dtype", None) or "").removeprefix("torch.") or None,
        eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
        module="transformers", layer_windows=[w for _, _, w in probe])
    layers = [TransformersLayerView(kv_heads, w) for _, _, w in probe]
    return TransformersCausalLM(hf, layers), config
