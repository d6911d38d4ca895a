"""The running batch on every rank: transformers' KV cache, one row per request, left-padded.

All ranks hold the same rows and apply the same BatchPlan, so every forward (and the all-reduces
AutoTP puts inside it) runs on all ranks together. A step is: keep some rows (dropping finished
ones and trimming padding no row needs any more), decode one token for each kept row in one
batched forward, then prefill each new prompt on its own (batch 1, no padding: exactly the
forward transformers' generate runs) and append its cache, left-padded to the batch's length.

Rolling mode regroups the cache between steps (transformers' DynamicCache). Static mode is for
kernel injection, whose kernels keep the KV cache inside DeepSpeed: the cache is opaque, so a
batch is prefilled together once and runs until every row is done.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .deepspeed_plan import BatchPlan


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Zero columns before the sequence axis (-2) of a [batch, heads, seq, dim] tensor."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(l, "keys") and hasattr(l, "values") for l in layers):
        raise RuntimeError(
            f"this model's KV cache ({type(cache).__name__}) cannot be regrouped between steps; "
            "the DeepSpeed engine's rolling batch needs transformers' DynamicCache")
    return layers


class PaddedKVBatch:
    def __init__(self, model: torch.nn.Module, device: torch.device, regroup: bool = True):
        self.model = model
        self.device = device
        self.regroup = regroup
        self.cache = None               # the model's past_key_values for the current rows
        self.pads: list[int] = []       # left padding of each row
        self.width = 0                  # cache length (padding included)
        params = inspect.signature(model.forward).parameters
        # Only the last position's logits are needed: skip the [tokens, vocab] matmul.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @property
    def rows(self) -> int:
        return len(self.pads)

    @property
    def kv_slots(self) -> int:
        """Positions the cache holds, padding included (what the batch costs in memory)."""
        return self.rows * self.width

    @torch.inference_mode()
    def execute(self, plan: BatchPlan) -> torch.Tensor:
        """Apply one step; logits [kept rows + new rows, vocab] float32 (every rank)."""
        self._select(plan.keep)
        parts = []
        if plan.keep:
            parts.append(self._decode(plan.tokens))
        if plan.prompts:
            parts.append(self._prefill(plan.prompts))
        if not parts:
            return torch.empty(0, 0)
        return torch.cat(parts)

    # rows -------------------------------------------------------------------------------------
    def _select(self, keep: list[int]) -> None:
        if keep == list(range(self.rows)):
            return
        if not keep:
            self.cache, self.pads, self.width = None, [], 0
            return
        if not self.regroup:
            raise ValueError("a static batch keeps all its rows or none")
        index = torch.tensor(keep, device=self.device)
        pads = [self.pads[i] for i in keep]
        lead = min(pads)                 # padding columns that every remaining row has
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, lead:]
            layer.values = layer.values[index, :, lead:]
        self.pads = [p - lead for p in pads]
        self.width -= lead

    # forwards ---------------------------------------------------------------------------------
    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True,
                         **self._extra)
        return out.logits[:, -1, :].float(), out.past_key_values

    def _mask(self, pads: list[int], width: int) -> torch.Tensor:
        columns = torch.arange(width, device=self.device).unsqueeze(0)
        return (columns >= torch.tensor(pads, device=self.device).unsqueeze(1)).long()

    def _decode(self, tokens: list[int]) -> torch.Tensor:
        input_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        positions = torch.tensor([self.width - p for p in self.pads], device=self.device)
        logits, self.cache = self._forward(input_ids, self._mask(self.pads, self.width + 1),
                                           positions.unsqueeze(1), self.cache)
        self.width += 1
        return logits

    def _prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        if not self.regroup:
            return self._prefill_together(prompts)
        logits, caches = [], []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=self.device)
            row_logits, cache = self._forward(
                ids, torch.ones_like(ids), torch.arange(len(prompt), device=self.device)[None],
                DynamicCache())
            logits.append(row_logits)
            caches.append(cache)
        self._append(caches, [len(p) for p in prompts])
        return torch.cat(logits)

    def _append(self, caches: list, lengths: list[int]) -> None:
        """Left-pad the batch and the new rows' caches to one width and stack them."""
        width = max([self.width, *lengths])
        sources = ([(self.cache, self.width)] if self.cache is not None else []) + list(
            zip(caches, lengths))
        layers = [_layers(cache) for cache, _ in sources]
        target = sources[0][0]
        for index, layer in enumerate(_layers(target)):
            layer.keys = torch.cat([_pad_left(ls[index].keys, width - w)
                                    for ls, (_, w) in zip(layers, sources)])
            layer.values = torch.cat([_pad_left(ls[index].values, width - w)
                                      for ls, (_, w) in zip(layers, sources)])
        self.cache = target
        self.pads = [p + width - self.width for p in self.pads] + [width - n for n in lengths]
        self.width = width

    def _prefill_together(self, prompts: list[list[int]]) -> torch.Tensor:
        """Static mode: one left-padded forward for the whole new batch (as generate runs it)."""
        if self.rows:
            raise ValueError("a static batch takes new rows only when it is empty")
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, prompts)], device=self.device)
        mask = self._mask(pads, width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, self.cache = self._forward(ids, mask, positions, None)
        self.pads, self.width = pads, width
        return logits
