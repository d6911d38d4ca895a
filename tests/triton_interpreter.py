"""Run Triton kernels on the CPU (TRITON_INTERPRET=1) so kernel tests need no GPU.

Triton 3.6's interpreter converts a scalar tensor to an index with int(array), which NumPy 2
refuses for the 1-element arrays it holds; data-dependent loop bounds (`range(0, n, B)` with n
loaded from memory) then fail. We patch that one conversion while the interpreter runs.
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
    return True
