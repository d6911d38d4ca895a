"""Run Triton kernels on the CPU (TRITON_INTERPRET=1) so kernel tests need no GPU.

Triton 3.6's interpreter converts a scalar tensor to an index with int(array), which NumPy 2
refuses for the 1-element arrays it holds; data-dependent loop bounds (`range(0, n, B)` with n
loaded from memory) then fail. We patch that one conversion while the interpreter runs.

Its software rounding to float8_e4m3fn is not the GPU's either (a carry into the exponent is
lost, 1.97 becoming 1.0; halves round up; subnormals are truncated), so narrowing to e4m3 is
done by torch instead, which rounds to nearest even as the GPU's cvt does.
"""

from __future__ import annotations

import os


def enable() -> bool:
    """Switch Triton to its interpreter (before triton is imported). False if no triton."""
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = interpreter._LangPatchScope.set_attr

    def set_attr(self, obj, name, value):
        if name == "__index__":
            value = lambda tensor: int(tensor.handle.data.reshape(-1)[0])  # noqa: E731
        return original(self, obj, name, value)

    interpreter._LangPatchScope.set_attr = set_attr
    _exact_e4m3_narrowing(interpreter)
    return True


def _exact_e4m3_narrowing(interpreter) -> None:
    import numpy as np
    import torch
    import triton.language as tl

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_exact_e4m3", False):
        return
    original = builder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        source = src.dtype.scalar
        if dst_type.scalar != tl.float8e4nv or source not in (tl.float32, tl.float16, tl.bfloat16):
            return original(self, src, dst_type, rounding_mode)
        data = src.data
        if source == tl.bfloat16:          # held as its 16 bits: widen them to float32
            data = (data.astype(np.uint32) << 16).view(np.float32)
        narrowed = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(
            torch.float8_e4m3fn).view(torch.uint8).numpy()
        return interpreter.TensorHandle(narrowed.reshape(data.shape), dst_type.scalar)

    builder.create_fp_to_fp = create_fp_to_fp
    builder._exact_e4m3 = True
