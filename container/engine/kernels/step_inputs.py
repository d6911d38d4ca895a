"""A decode step's inputs, unpacked on the device from the step's plan (GPU decode graphs).

The decode graph begins with this kernel: it reads the plan (model_runner.StepPlan's flat int64
array, uploaded in one copy to a fixed buffer) and writes the graph's static inputs. Rows whose
token is still a placeholder take it from the previous step's sampled tokens (a fixed buffer the
graph itself writes at its end). Rows past the real batch are padding: scratch KV slot, length
0. One launch inside the graph replaces a dozen small copies and gathers before it.

Plan layout for a decode step of n sequences (n tokens, n logits): header [5], input_ids [n],
positions [n], slots [n], query_start [n+1], seq_lens [n], tables [n * max_blocks],
logits_rows [n], from_previous [n].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _unpack_decode_kernel(plan_ptr, previous_ptr, input_ids_ptr, positions_ptr, slots_ptr,
                          seq_lens_ptr, tables_ptr, stride_tables, scratch_slot,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0)
    count = tl.load(plan_ptr)
    if row < count:
        max_blocks = tl.load(plan_ptr + 2)
        num_logits = tl.load(plan_ptr + 3)
        token = tl.load(plan_ptr + 5 + row)
        position = tl.load(plan_ptr + 5 + count + row)
        slot = tl.load(plan_ptr + 5 + 2 * count + row)
        seq_len = tl.load(plan_ptr + 6 + 4 * count + row)
        tables_at = 6 + 5 * count
        source = tl.load(plan_ptr + tables_at + count * max_blocks + num_logits + row)
        if source >= 0:
            token = tl.load(previous_ptr + source)
        tl.store(input_ids_ptr + row, token)
        tl.store(positions_ptr + row, position)
        tl.store(slots_ptr + row, slot)
        tl.store(seq_lens_ptr + row, seq_len)
        for start in range(0, max_blocks, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            ok = cols < max_blocks
            blocks = tl.load(plan_ptr + tables_at + row * max_blocks + cols, mask=ok, other=0)
            tl.store(tables_ptr + row * stride_tables + cols, blocks, mask=ok)
    else:
        tl.store(input_ids_ptr + row, 0)
        tl.store(positions_ptr + row, 0)
        tl.store(slots_ptr + row, scratch_slot)
        tl.store(seq_lens_ptr + row, 0)


def unpack_decode_plan(plan: torch.Tensor, previous: torch.Tensor, input_ids: torch.Tensor,
                       positions: torch.Tensor, slots: torch.Tensor, seq_lens: torch.Tensor,
                       tables: torch.Tensor, scratch_slot: int) -> None:
    """Fill the first input_ids.shape[0] rows of the static inputs from a decode plan."""
    rows = input_ids.shape[0]
    _unpack_decode_kernel[(rows,)](plan, previous, input_ids, positions, slots, seq_lens, tables,
                                   tables.stride(0), scratch_slot, BLOCK=128, num_warps=1)
