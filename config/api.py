"""The one DRF exception handler: every error a client sees is JSON `{code, message[, fields]}` with its status."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import MarketError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, MarketError):
        return Response({"code": exc.code, "message": exc.message}, status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's 500 page, and the traceback goes to the log
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"code": "invalid_input", "message": _first_message(exc.detail), "fields": exc.detail}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = {"code": code, "message": str(exc.detail)}
    return response


def _first_message(detail: Any, prefix: str = "") -> str:
    """The first leaf of a DRF error tree, named by its field path: `messages.0.role: "x" is not a valid choice.`"""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)  # str: list items are keyed 0, 1, ...; 0 is falsy
            return _first_message(value, f"{prefix}.{name}" if prefix and name else prefix or name)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], prefix)
    return f"{prefix}: {detail}" if prefix else str(detail)
