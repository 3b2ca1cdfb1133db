"""The API's error answers: every error a client of `/api/` sees is JSON `{code, message[, fields]}` with its
status, whether DRF raised it (the exception handler), Django did before any view ran (handler400/403/404/500 for
API paths; pages keep Django's HTML), or the request body was unreadable (the JSON parser)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, parsers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import MarketError
from inference import boundedjson

# API bodies nest three levels (a chat: object, list, message); deeper JSON is refused before it is parsed
# (inference/boundedjson.py says why parsing it at all is not safe).
MAX_JSON_DEPTH = 32


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, MarketError):
        return Response({"code": exc.code, "message": exc.message}, status=exc.status)
    if isinstance(exc, RequestDataTooBig):  # Django's own bound, met when DRF reads the body through request.body
        exc = RequestTooLarge(f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: server_error below answers 500, and the traceback goes to the log
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


class RequestTooLarge(exceptions.APIException):  # type: ignore[misc]  # DRF ships no type hints
    status_code = 413
    default_code = "request_too_large"
    default_detail = "the request body is too large"


class JSONParser(parsers.JSONParser):  # type: ignore[misc]  # DRF ships no type hints
    """DRF's JSON parser with two bounds: the body's size (DATA_UPLOAD_MAX_MEMORY_SIZE bytes, which Django applies
    to forms but DRF, reading the stream itself, never did) and its nesting (MAX_JSON_DEPTH)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if limit is not None and len(body) > limit:
            raise RequestTooLarge(f"the request body is over {limit} bytes")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return boundedjson.loads(body.decode(encoding), max_depth=MAX_JSON_DEPTH)
        except boundedjson.TooDeep as exc:
            raise exceptions.ParseError(str(exc)) from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


# Django's error views (config/urls.py), for errors no DRF view answered: a URL that matches nothing, a bad Host
# header, a CSRF failure, an unexpected exception. JSON on the API, Django's HTML on pages.


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"code": code, "message": message}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(400, "bad_request", "the request could not be read (a bad Host header or malformed request)")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(403, "permission_denied", "you may not do this")
    return defaults.permission_denied(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(404, "not_found", "no API endpoint here; GET /api/schema/ lists them")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return _error(500, "server_error", "the server failed to answer; the operator has the details in its log")
    return defaults.server_error(request)
