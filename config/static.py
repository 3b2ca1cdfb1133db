"""Static files under Daphne: Django's ASGI handler serves none, so /static/ is answered from the finders (app
static folders and onnxruntime-web from node_modules), with or without DEBUG.

Every static response also carries the cross-origin isolation headers: the provider tab's Web Worker script and
onnxruntime-web's thread workers must be served with COEP themselves to share memory (WASM threads)."""

from __future__ import annotations

from typing import Any

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.http import HttpRequest, HttpResponseBase

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def isolate(response: HttpResponseBase) -> HttpResponseBase:
    for name, value in ISOLATION_HEADERS.items():
        response.setdefault(name, value)
    return response


class IsolatedStaticFilesHandler(ASGIStaticFilesHandler):
    """Django's own ASGI static handler (what `runserver` uses), answering from the finders without collectstatic;
    a deployment that puts a CDN or a web server in front should send the same headers from there."""

    def serve(self, request: HttpRequest) -> Any:
        return isolate(super().serve(request))
