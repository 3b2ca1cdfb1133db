"""Cross-origin isolation for the provider tab: with COOP and COEP the page is `crossOriginIsolated`, which is
what lets onnxruntime-web run WASM on several threads (SharedArrayBuffer)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from config.static import isolate

ISOLATED_PREFIXES = ("/provide/",)


class CrossOriginIsolationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        return isolate(response) if request.path.startswith(ISOLATED_PREFIXES) else response
