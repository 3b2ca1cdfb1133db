"""The OpenAPI schema documents every error an operation can answer, each a JSON `{code, message}`.

Errors any operation of a kind can give are added here: 401 and 429 wherever authentication is required (every
operation but the schema's own, which answers 429 alone), 400 where an operation reads query parameters or a body
(413 and 415 too for a body), 404 where the path names something (an id that matches nothing, or not yours).
Errors of one operation's own (402, 409, 503, a 404 without a path parameter) are declared beside it with
`errors(...)` in `extend_schema(responses=...)`."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions, serializers

DESCRIPTIONS = {
    400: "Invalid input (`invalid_input`, `parse_error` or the operation's own code).",
    401: "No token, or a wrong one (`not_authenticated`, `authentication_failed`).",
    402: "Not enough balance (`insufficient_funds`); nothing moved.",
    403: "Not allowed (`permission_denied`), e.g. a session write without its CSRF token.",
    404: "Nothing of yours here (`not_found` or the operation's own code).",
    409: "Not in a state that allows it now (the operation's own code).",
    413: "The body is over the upload limit (`request_too_large`).",
    415: "The body is not JSON (`unsupported_media_type`).",
    429: "Too many requests (`throttled`); Retry-After says how many seconds to wait.",
    502: "The chain node answered with an error (`chain_error`).",
    503: "A service the operation needs is down (`chain_unavailable`).",
}


class ErrorSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    """Every error of the API."""

    code = serializers.CharField(help_text="Stable machine code, e.g. insufficient_funds.")
    message = serializers.CharField(help_text="For people.")
    fields = serializers.JSONField(required=False, help_text="invalid_input only: the error of each field.")


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Responses for `extend_schema(responses={200: ..., **errors(404, 409)})`."""
    return {status: OpenApiResponse(ErrorSerializer, description=DESCRIPTIONS[status]) for status in statuses}


class ErrorDocumentingSchema(AutoSchema):
    def _get_response_bodies(self, direction: Literal["request", "response"] = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for status in self._common_errors():
            if str(status) not in responses:
                documented = self._get_response_for_code(  # type: ignore[no-untyped-call]  # untyped upstream
                    ErrorSerializer, str(status), direction=direction
                )
                responses[str(status)] = documented | {"description": DESCRIPTIONS[status]}
        return dict(sorted(responses.items()))

    def _common_errors(self) -> list[int]:
        statuses = [429]
        if not all(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions()):
            statuses.append(401)
        body = self._get_request_body()  # type: ignore[no-untyped-call]  # drf-spectacular leaves it untyped
        has_body = self.method in ("POST", "PUT", "PATCH") and body is not None
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            statuses.append(403)  # a session write without its CSRF token
        if has_body:
            statuses += [400, 413, 415]
        if any(p["in"] == "query" for p in self._get_parameters()):
            statuses.append(400)
        if "{" in self.path:
            statuses.append(404)
        return statuses
