"""One error hierarchy for the whole project: a stable machine code, a clear message, an HTTP status."""

from __future__ import annotations


class MarketError(Exception):
    """Base class of errors a user may see; `code` is stable and documented, `message` is for people."""

    code = "market_error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(MarketError):
    code = "not_found"
    status = 404


class Conflict(MarketError):
    code = "conflict"
    status = 409


class InvalidInput(MarketError):
    code = "invalid_input"
    status = 400
