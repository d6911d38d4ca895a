"""Errors that end start-up with one line, and errors that become JSON responses."""

from __future__ import annotations


class StartupError(Exception):
    """Start-up cannot continue. The message is one line: what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ServingError(Exception):
    """A request failed; becomes {"code", "type", "message"} with this HTTP status."""

    def __init__(self, code: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.code, self.type, self.message = code, type_, message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"code": self.code, "type": self.type, "message": self.message}


def bad_request(message: str) -> ServingError:
    return ServingError(400, "BadRequest", message)
