"""Qwen3 dense: the Llama decoder with RMSNorm over each head's queries and keys before
rotary (ModelConfig.qk_norm, read from the architecture) and an explicit head_dim."""

from __future__ import annotations

from .llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Same parameters and checkpoint names as Llama plus self_attn.{q,k}_norm.weight, which
    load whole on every rank (they act on one head at a time)."""
CausalLM = Qwen3ForCausalLM
