"""Phi-3 / Phi-4 (Phi3ForCausalLM): the Llama decoder, with q/k/v and gate/up stored fused in
the checkpoint (qkv_proj, gate_up_proj: the same names as our parameters, loaded piece by
piece so each rank still reads only its rows) and LongRoPE ("su") scaling with short and long
factors (layers/rotary.py), over part of each head on Phi-4-mini (partial_rotary_factor)."""

from __future__ import annotations

from .llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    stacked_params = {}      # nothing to stack: the checkpoint's matrices are already fused


CausalLM = Phi3ForCausalLM
