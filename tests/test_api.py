"""Every error on the API is JSON `{code, message}` with its status, whoever raises it; pages keep HTML; a body too
deep or too large is a 400 or 413, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from market import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def token() -> str:
    user = services.account_open(username="alice")[0]
    return str(Token.objects.get_or_create(user=user)[0].key)


def client(token: str | None = None) -> Client:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return Client(raise_request_exception=False, headers=headers)


def nested(depth: int) -> str:
    return '{"model": ' + "[" * depth + "]" * depth + ', "prompt": "hi"}'


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]
    return body


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
def test_deeply_nested_json_is_a_400_not_a_500(token: str, depth: int) -> None:
    response = client(token).post("/api/jobs/", nested(depth), content_type="application/json")
    body = assert_error(response, 400, "parse_error")
    assert "nested deeper than 32 levels" in body["message"]


def test_json_nested_within_the_bound_reaches_the_view(token: str) -> None:
    response = client(token).post("/api/jobs/", nested(30), content_type="application/json")
    assert_error(response, 400, "invalid_input")  # the serializer's answer: model is not a string


def test_malformed_json_and_nan_are_parse_errors(token: str) -> None:
    assert_error(client(token).post("/api/jobs/", "{", content_type="application/json"), 400, "parse_error")
    nan = client(token).post("/api/jobs/", '{"model": NaN}', content_type="application/json")
    assert_error(nan, 400, "parse_error")


def test_a_body_over_the_upload_limit_is_a_413(token: str, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    body = json.dumps({"model": "tiny", "prompt": "x" * 1_000})
    assert_error(client(token).post("/api/jobs/", body, content_type="application/json"), 413, "request_too_large")


def test_forms_are_refused_the_api_takes_json(token: str) -> None:
    response = client(token).post("/api/jobs/", {"model": "tiny", "prompt": "hi"})  # multipart
    assert_error(response, 415, "unsupported_media_type")


def test_an_unknown_api_path_is_json_and_lists_no_patterns() -> None:
    response = client().get("/api/no-such-thing/")
    body = assert_error(response, 404, "not_found")
    assert "admin/" not in body["message"] and b"urlpatterns" not in response.content


def test_an_unknown_page_is_html() -> None:
    response = client().get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
    assert b"admin/" not in response.content  # no debug page listing the URL patterns


def test_an_unexpected_error_on_the_api_is_a_json_500_without_a_traceback(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("market.selectors.providers_online", broken)
    response = client(token).get("/api/providers/")
    assert_error(response, 500, "server_error")
    assert b"secret detail" not in response.content and b"Traceback" not in response.content


def test_an_unexpected_error_on_a_page_is_html(monkeypatch: pytest.MonkeyPatch) -> None:
    user = User.objects.create_user("erin", password="a-long-tab-password")
    monkeypatch.setattr("market.selectors.benchmark_shard", lambda: 1 / 0)
    page = client()
    page.force_login(user)
    response = page.get("/provide/")
    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")
    assert b"ZeroDivisionError" not in response.content


def test_a_bad_host_is_a_json_400_on_the_api() -> None:
    response = Client(raise_request_exception=False).get("/api/models/", headers={"Host": "evil.example"})
    assert_error(response, 400, "bad_request")


def test_a_csrf_failure_on_the_api_is_json(token: str) -> None:
    """Session-authenticated writes need the CSRF token; the refusal is JSON like every other error."""
    user = User.objects.get(username="alice")
    browser = Client(enforce_csrf_checks=True, raise_request_exception=False)
    browser.force_login(user)
    response = browser.post(
        "/api/jobs/", json.dumps({"model": "tiny", "prompt": "hi"}), content_type="application/json"
    )
    body = assert_error(response, 403, "permission_denied")
    assert "CSRF" in body["message"]


def test_anonymous_is_a_json_401(token: str) -> None:
    assert_error(client().get("/api/account/"), 401, "not_authenticated")
    assert_error(client("0" * 40).get("/api/account/"), 401, "authentication_failed")
