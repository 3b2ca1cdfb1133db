"""Shard distribution (providers download shard files by SHA-256, with an ETag so a cached copy costs nothing), the
provider tab, the page people open to lend their browser's compute, with its console of the account's agents, and
that console's figures as JSON (GET /api/provider/console/)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from market import model_files
from market import selectors as market_selectors
from worker_web import selectors


class ShardDownloadApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        summary="Download a shard (ONNX) by its SHA-256",
        responses={200: OpenApiResponse(description="the ONNX file"), 304: OpenApiResponse(description="cached")},
    )
    def get(self, request: Request, sha256: str) -> HttpResponseBase:
        shard = selectors.shard_by_sha256(sha256=sha256)
        etag = f'"{shard.sha256}"'
        if etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]:
            response: HttpResponseBase = HttpResponse(status=304)
        else:
            response = FileResponse(model_files.shard_file_open(shard), content_type="application/onnx")
            response["Content-Length"] = str(shard.size_bytes)
        response["ETag"] = etag
        response["X-Shard-SHA256"] = shard.sha256
        response["Cache-Control"] = "private, max-age=31536000, immutable"  # content-addressed: never changes
        return response


class ProviderConsoleApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="Your provider console: agents' capacity and asks, earnings (and per day), stake, audits, reliability",
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.provider_console(user=request.user))


@login_required
def provider_page(request: HttpRequest) -> HttpResponse:
    """The provider tab: sign-in is required; the socket and the shard downloads authenticate by the session."""
    shard = market_selectors.benchmark_shard()
    config = {
        "socketPath": "/ws/provider/",
        "ortBase": static("onnxruntime-web/"),
        "workerUrl": static("worker_web/provider-worker.js"),
        "earningsUrl": reverse("api-provider-earnings"),
        "chainUrl": reverse("api-account-chain"),
        "auditsUrl": reverse("api-provider-audits"),
        "consoleUrl": reverse("api-provider-console"),
        "benchmarkShard": market_selectors.shard_descriptor(shard) if shard is not None else None,
        "defaultName": f"{request.user.get_username()}-browser"[:100],
    }
    console = selectors.provider_console(user=request.user)  # type: ignore[arg-type]  # login_required
    context = {"config": config, "nav": "provide", "console": console}
    return render(request, "worker_web/provide.html", context)
