"""Programmatic dependent launch (Hopper and later) for our decode kernels: the launch options
(host) and the prologue every such kernel runs first (device)."""

from __future__ import annotations

import os

import triton
import triton.language as tl

_PDL: dict = {}
PDL_MAX_ROWS = 1


def pdl_launch(device, rows: int) -> dict:
    """Launch options for programmatic dependent launch (Hopper and later): a kernel may start
    while the one before it finishes, and waits (griddepcontrol.wait) only before it reads that
    kernel's output; a GEMV streams its first weight tile meanwhile. On 8B-shaped batch-1
    decode graphs this took an H200 step from 4.16 to 3.90 ms (2 x H200, TP=2: 2.73 to 2.47),
    but made batch 16 slower by 1-3% (cuBLAS products there break the chain), so it is used
    for steps of up to PDL_MAX_ROWS rows. SERVE_PDL=0 turns it off; it is read on each call
    (a dictionary lookup, and graphs replay without calling this) so a profiling script can
    switch it between two captures."""
    if device.type != "cuda" or rows > PDL_MAX_ROWS or os.environ.get("SERVE_PDL") == "0":
        return {"PDL": False}
    index = device.index if device.index is not None else 0
    if index not in _PDL:
        import torch

        _PDL[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return {"PDL": True, "launch_pdl": True} if _PDL[index] else {"PDL": False}


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    """Wait for the kernel before this one (its output is about to be read), then let the
    kernel after this one launch. Nothing without PDL."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
