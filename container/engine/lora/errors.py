"""The one error type of the LoRA code: an HTTP status, a type and one line saying why."""

from __future__ import annotations


class LoRAError(Exception):
    def __init__(self, code: int, type_: str, message: str):
        super().__init__(message)
        self.code, self.type, self.message = code, type_, message
