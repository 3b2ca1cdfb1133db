"""The provider tab's server side: sign-in, the page and its static files with the cross-origin isolation headers
that WASM threads need, only the needed onnxruntime-web files served with the right types."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils.module_loading import import_string

from config import finders
from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ISOLATED = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}


def asgi_get(path: str) -> tuple[int, dict[str, str], bytes]:
    """GET through the project's ASGI application, as Daphne serves it (static files included)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client never disconnects; Django stops listening when it has answered
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async_to_sync(application)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def isolated(headers: Any) -> bool:
    return all(headers.get(name) == value for name, value in ISOLATED.items())


def test_every_middleware_is_async_capable() -> None:
    """One sync-only middleware switches the whole chain to sync mode under ASGI; the embedded profile's job runners,
    started on the server's loop from a request, then inherit that request's thread executor and die with it."""
    for dotted in settings.MIDDLEWARE:
        middleware = import_string(dotted)
        assert getattr(middleware, "async_capable", False), f"{dotted} is not async-capable"


def test_anonymous_visitor_is_sent_to_sign_in() -> None:
    response = Client().get("/provide/")
    assert response.status_code == 302 and response["Location"] == "/signin/?next=/provide/"


def test_signed_in_provider_gets_the_page_cross_origin_isolated() -> None:
    user = User.objects.create_user("dave", password="pw-for-the-tab")
    client = Client()
    client.force_login(user)
    response = client.get("/provide/")
    assert response.status_code == 200
    assert isolated(response.headers)
    config = response.context["config"]
    assert config["socketPath"] == "/ws/provider/"
    assert config["benchmarkShard"] is None  # no model imported: nothing to benchmark, and the page says so
    assert config["defaultName"] == "dave-browser"
    assert b"nothing to benchmark" in response.content
    assert b"Tokens earned" in response.content
    assert config["earningsUrl"] == "/api/provider/earnings/"  # the page reads earnings from the ledger only
    assert config["chainUrl"] == "/api/account/chain/"  # and its stake and pending chain operations from the API


def test_issue_token_password_lets_the_user_sign_in_on_the_tab() -> None:
    call_command("issue_token", "erin", "--create", "--password", "a-long-tab-password")
    client = Client()
    response = client.post("/provide/login/", {"username": "erin", "password": "a-long-tab-password"})
    assert response.status_code == 302 and response["Location"] == "/provide/"
    assert client.get("/provide/").status_code == 200
    refused = Client().post("/provide/login/", {"username": "erin", "password": "wrong"})
    assert refused.status_code == 200 and b"did not match" in refused.content


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/onnxruntime-web/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("/static/onnxruntime-web/ort.wasm.min.mjs", "text/javascript"),
        ("/static/worker_web/provider-worker.js", "text/javascript"),
    ],
)
def test_static_files_are_served_isolated_with_their_types(path: str, content_type: str) -> None:
    status, headers, body = asgi_get(path)
    assert status == 200 and body
    assert headers["content-type"].startswith(content_type)
    assert isolated(headers), "the worker and ORT's thread workers need COEP themselves to share memory"


def test_only_the_needed_onnxruntime_web_files_are_served() -> None:
    assert asgi_get("/static/onnxruntime-web/ort.all.min.js")[0] == 404
    assert asgi_get("/static/onnxruntime-web/ort.wasm.min.mjs.map")[0] == 404
    finder = finders.OnnxRuntimeWebFinder()
    assert sorted(name for name, _ in finder.list([])) == sorted(finders.OnnxRuntimeWebFinder.files)
    assert finder.find("onnxruntime-web/ort-wasm-simd-threaded.wasm")
    assert finder.find("onnxruntime-web/ort.min.js") == []
    assert finder.check() == []


def test_the_charts_come_from_the_pinned_uplot() -> None:
    assert asgi_get("/static/uplot/uPlot.esm.js")[0] == 200
    assert asgi_get("/static/uplot/uPlot.iife.js")[0] == 404
    assert finders.UPlotFinder().check() == []
