"""Cross-origin isolation for the provider tab: with COOP and COEP the page is `crossOriginIsolated`, which is
what lets onnxruntime-web run WASM on several threads (SharedArrayBuffer)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

from config.static import isolate

ISOLATED_PREFIXES = ("/provide/",)


class CrossOriginIsolationMiddleware(MiddlewareMixin):
    """MiddlewareMixin makes it async-capable like Django's own middleware: one sync-only middleware would switch
    the whole chain to sync mode under ASGI, and the embedded profile's job runners, started from a request on the
    server's loop, must not inherit that request's thread executor."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return isolate(response) if request.path.startswith(ISOLATED_PREFIXES) else response
