"""Pull the next weights into L2 while short, latency-bound kernels run (GPU decode graphs).

At small batch a decode step streams every weight once, and between the big matrix-vector
products come kernels that barely touch memory (rotary, attention over a few hundred keys, the
norms, silu): the memory system sits idle for several microseconds each time. Inside the
captured decode graphs, a side stream issues Hopper's bulk L2 prefetch
(cp.async.bulk.prefetch.L2) for the next projection's weight as soon as the previous product
finishes, so those bytes are already in L2 when the product that needs them starts.

A prefetch is only a hint: it changes no value anywhere, so the model computes the same thing
with it on or off. Off unless the chip has the instruction (compute capability 9.0 or newer).

SERVE_L2_PREFETCH: "0" off; "o" the attention output projection only (the longest idle window:
rotary + attention); "all" (default) that plus the first SERVE_L2_PREFETCH_MB megabytes
(default 8) of the gate/up, down and next layer's QKV weights.
SERVE_L2_PREFETCH_MAX_BATCH: the largest graph batch that prefetches (default 64; at larger
batches the products are no longer bound by reading weights).
"""

from __future__ import annotations

import os

import torch

_KERNEL = None
CHUNK = 32768                   # bytes per bulk prefetch instruction
PER_PROGRAM = 32                # one instruction per lane of the single warp


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def _l2_prefetch_kernel(ptr, nbytes, CHUNK: tl.constexpr, PER_PROGRAM: tl.constexpr):
            index = tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)
            offsets = index.to(tl.int64) * CHUNK
            size = tl.minimum(nbytes - offsets, CHUNK)
            size = tl.where(offsets < nbytes, size, 0).to(tl.int32)
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.gt.s32 p, $2, 0; "
                "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
                "=r,l,r", [ptr + offsets, size], dtype=tl.int32, is_pure=False, pack=1)

        _KERNEL = _l2_prefetch_kernel
    return _KERNEL


def l2_prefetch(tensor: torch.Tensor, nbytes: int | None = None) -> None:
    """Ask L2 for the first nbytes (default: all) of a contiguous CUDA tensor."""
    total = tensor.numel() * tensor.element_size()
    nbytes = total if nbytes is None else min(nbytes, total)
    nbytes -= nbytes % 16                       # the instruction moves multiples of 16 bytes
    if nbytes <= 0:
        return
    chunks = -(-nbytes // CHUNK)
    grid = (-(-chunks // PER_PROGRAM),)
    _kernel()[grid](tensor.view(torch.uint8) if tensor.dtype != torch.uint8 else tensor,
                    nbytes, CHUNK=CHUNK, PER_PROGRAM=PER_PROGRAM, num_warps=1)


class WeightPrefetch:
    """The model calls ahead(weight) where the next weight is known; a no-op unless a decode
    graph of a small batch is being captured (or run eagerly for its warm-up) on a GPU that
    has the instruction."""

    def __init__(self):
        self.mode = os.environ.get("SERVE_L2_PREFETCH", "all")
        self.small_bytes = int(float(os.environ.get("SERVE_L2_PREFETCH_MB", "8")) * (1 << 20))
        self.max_batch = int(os.environ.get("SERVE_L2_PREFETCH_MAX_BATCH", "64"))
        self.active = False
        self.stream: torch.cuda.Stream | None = None

    def supported(self, device: torch.device) -> bool:
        return (device.type == "cuda" and self.mode != "0"
                and torch.cuda.get_device_capability(device)[0] >= 9)

    def start(self, batch: int, device: torch.device) -> None:
        self.active = batch <= self.max_batch and self.supported(device)
        if self.active and self.stream is None:
            self.stream = torch.cuda.Stream(device)

    def ahead(self, weight: torch.Tensor, whole: bool = False) -> None:
        """Prefetch the weight the next product reads: all of it where the idle window is long
        (whole=True), else its first small_bytes (mode "all" only)."""
        if not self.active or (not whole and self.mode != "all"):
            return
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            l2_prefetch(weight, None if whole else self.small_bytes)

    def finish(self) -> None:
        """Join the side stream back (a graph capture must end on one stream)."""
        if self.active:
            torch.cuda.current_stream().wait_stream(self.stream)
        self.active = False


PREFETCH = WeightPrefetch()
