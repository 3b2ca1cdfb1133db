"""The buyer REST API: who sees what (owner / other user / anonymous), how a job request is checked before anything
is stored, the launch of a job once its row is committed, cancelling, and the OpenAPI schema and docs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from inference import wire
from inference.tiny import write_tiny_gguf
from market import selectors, services
from market.models import Job, LanguageModel, Provider

pytestmark = pytest.mark.django_db

CONTEXT = 256  # inference.tiny.TINY_CONFIG.max_context


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def model(tmp_path: Path, settings: Any, tiny_gguf: Path) -> LanguageModel:
    """The tiny model imported as two shards (a chain that can run), stored under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return services.model_import(source=str(tiny_gguf), plan="0-2,2-4", name="tiny").model


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob")


def api(user: User | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Job ids handed to a runner; no runner starts in these tests."""
    calls: list[int] = []
    monkeypatch.setattr("market.tasks.job_launch", calls.append)
    return calls


def make_job(buyer: User, model: LanguageModel, state: str = Job.State.QUEUED) -> Job:
    return Job.objects.create(buyer=buyer, model=model, messages=[{"role": "user", "content": "hi"}], state=state)


# --- who sees what ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/jobs/"),
        ("post", "/api/jobs/"),
        ("get", "/api/jobs/{id}/"),
        ("post", "/api/jobs/{id}/cancel/"),
        ("get", "/api/models/"),
        ("get", "/api/providers/"),
    ],
)
def test_anonymous_requests_are_401(model: LanguageModel, alice: User, method: str, path: str) -> None:
    job = make_job(alice, model)
    response = getattr(api(), method)(path.format(id=job.pk), {"model": "tiny", "prompt": "hi"}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert Job.objects.get().state == Job.State.QUEUED and Job.objects.count() == 1


def test_the_job_list_holds_only_your_own_jobs_newest_first(model: LanguageModel, alice: User, bob: User) -> None:
    first, second = make_job(alice, model), make_job(alice, model)
    make_job(bob, model)
    assert [job["id"] for job in api(alice).get("/api/jobs/").json()] == [second.pk, first.pk]
    assert len(api(bob).get("/api/jobs/").json()) == 1
    assert api(User.objects.create_user("carol")).get("/api/jobs/").json() == []


def test_the_owner_reads_a_job(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model)
    body = api(alice).get(f"/api/jobs/{job.pk}/").json()
    assert (body["id"], body["state"], body["model"], body["quant"]) == (job.pk, "queued", "tiny", "f32")
    assert body["stream"] == f"/ws/jobs/{job.pk}/"
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path", ["/api/jobs/{id}/", "/api/jobs/{id}/cancel/"])
def test_another_buyers_job_is_404_like_a_missing_one(model: LanguageModel, alice: User, bob: User, path: str) -> None:
    job = make_job(alice, model)
    method = "post" if "cancel" in path else "get"
    theirs = getattr(api(bob), method)(path.format(id=job.pk))
    missing = getattr(api(bob), method)(path.format(id=job.pk + 1000))
    assert (theirs.status_code, missing.status_code) == (404, 404)
    assert theirs.json() == {"code": "job_not_found", "message": f"job {job.pk} not found"}
    assert missing.json()["code"] == "job_not_found"
    assert Job.objects.get().state == Job.State.QUEUED


def test_models_are_listed_with_their_shards(model: LanguageModel, bob: User) -> None:
    [listed] = api(bob).get("/api/models/").json()
    assert (listed["name"], listed["quant"], listed["layers"]) == ("tiny", "f32", 4)
    assert [(s["id"], s["layers"]) for s in listed["shards"]] == [("tiny:f32:0-2", "0-2"), ("tiny:f32:2-4", "2-4")]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in listed["shards"])


def test_only_providers_heard_from_lately_are_listed_fastest_first(alice: User, bob: User) -> None:
    now, stale = timezone.now(), timezone.now() - timedelta(minutes=5)
    online = {"state": Provider.State.ONLINE, "channel_name": "specific.x", "last_seen": now}
    slow = Provider.objects.create(user=alice, name="slow", ns_per_layer_token=900, **online)
    fast = Provider.objects.create(user=alice, name="fast", ns_per_layer_token=100, **online)
    new = Provider.objects.create(user=bob, name="new", **online)
    Provider.objects.create(user=alice, name="silent", **{**online, "last_seen": stale})
    Provider.objects.create(user=alice, name="gone", state=Provider.State.OFFLINE, last_seen=now)
    listed = api(bob).get("/api/providers/").json()
    assert [p["id"] for p in listed] == [fast.pk, slow.pk, new.pk]
    assert "user" not in listed[0] and "channel_name" not in listed[0]


# --- creating a job --------------------------------------------------------------------------------------------


def test_a_prompt_becomes_a_queued_job_launched_after_commit(
    model: LanguageModel, alice: User, launched: list[int], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": "hello there"}, format="json")
        assert launched == []  # not before the row is committed
    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(callbacks) == 1 and launched == [body["id"]]
    job = Job.objects.get()
    assert (job.pk, job.buyer, job.state, job.max_new_tokens, job.seed) == (body["id"], alice, "queued", 64, None)
    assert job.messages == [{"role": "user", "content": "hello there"}]
    expected = selectors.model_tokenizer(model).encode_chat(job.messages)
    assert body["prompt_tokens"] == job.prompt_tokens == len(expected)


def test_a_chat_with_sampling_settings_is_stored_as_given(
    model: LanguageModel, alice: User, launched: list[int]
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    request = {"model": "tiny", "quant": "f32", "messages": messages, "max_new_tokens": 5, "temperature": "0.7"}
    response = api(alice).post("/api/jobs/", {**request, "top_p": "0.9", "seed": 42}, format="json")
    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert job.messages == messages and job.max_new_tokens == 5 and job.seed == 42
    assert (str(job.temperature), str(job.top_p)) == ("0.70", "0.90")


def test_the_context_limit_counts_the_prompt_and_the_new_tokens(
    model: LanguageModel, alice: User, launched: list[int]
) -> None:
    prompt = "hello there " * 4
    room = CONTEXT - len(selectors.model_tokenizer(model).encode_chat([{"role": "user", "content": prompt}]))
    over = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": room + 1}, format="json")
    assert over.status_code == 400 and over.json()["code"] == "context_overflow"
    assert f"model's context of {CONTEXT}" in over.json()["message"]
    fits = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": room}, format="json")
    assert fits.status_code == 201, fits.json()
    assert Job.objects.count() == 1


def test_a_prompt_whose_prefill_does_not_fit_in_one_frame_is_refused(
    model: LanguageModel, alice: User, launched: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt's hidden states ([1, S, hidden] float16) cross between shards in one frame; the tiny model's would
    need 65,535 tokens, so the frame limit is lowered to make this prompt the longest that fits."""
    prompt = "hello there"
    tokens = len(selectors.model_tokenizer(model).encode_chat([{"role": "user", "content": prompt}]))
    frame = wire.HEADER_BYTES + 3 * 4 + tokens * 2 * model.config["hidden"]
    hidden = np.zeros((1, tokens, model.config["hidden"]), np.float16)
    assert len(wire.encode(wire.MessageType.STEP_INPUT, uuid.uuid4(), 0, 1, hidden)) == frame
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", frame - 1)
    refused = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": 1}, format="json")
    assert refused.status_code == 400 and refused.json()["code"] == "context_overflow"
    assert f"at most {tokens - 1} tokens" in refused.json()["message"]
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", frame)
    fits = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": 1}, format="json")
    assert fits.status_code == 201, fits.json()


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("request_body", "status", "code", "message"),
    [
        pytest.param({"model": "nope", "prompt": "hi"}, 404, "unknown_model", "model nope is not", id="unknown-model"),
        pytest.param({"model": "tiny", "quant": "q4", "prompt": "hi"}, 404, "unknown_model", "tiny (q4)", id="quant"),
        pytest.param({"model": "tiny", "quant": "q8", "prompt": "hi"}, 400, "invalid_input", "quant:", id="bad-quant"),
        pytest.param({"model": "tiny"}, 400, "invalid_input", "give either messages or prompt", id="neither"),
        pytest.param({"model": "tiny", "prompt": "hi", "messages": USER}, 400, "invalid_input", "not both", id="both"),
        pytest.param({"model": "tiny", "prompt": ""}, 400, "invalid_input", "prompt:", id="empty-prompt"),
        pytest.param({"model": "tiny", "messages": []}, 400, "invalid_input", "messages:", id="no-messages"),
        pytest.param(
            {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
            400,
            "invalid_input",
            'messages.0.role: "robot" is not a valid choice.',
            id="bad-role",
        ),
        pytest.param(
            {"model": "tiny", "messages": [*USER, {"role": "user"}]},
            400,
            "invalid_input",
            "messages.1.content:",
            id="no-content",
        ),
        pytest.param({"model": "tiny", "prompt": "hi", "max_new_tokens": 0}, 400, "invalid_input", "max_new", id="0"),
        pytest.param({"model": "tiny", "prompt": "hi", "max_new_tokens": 5000}, 400, "invalid_input", "max_", id="5k"),
        pytest.param(
            {"model": "tiny", "prompt": "hi", "temperature": 3}, 400, "invalid_input", "temperature:", id="t3"
        ),
        pytest.param({"model": "tiny", "prompt": "hi", "top_p": 0}, 400, "invalid_input", "top_p:", id="top-p-0"),
        pytest.param({"model": "tiny", "prompt": "x" * 300}, 400, "context_overflow", "exceeds", id="long-prompt"),
    ],
)
def test_a_refused_job_request_creates_nothing(
    model: LanguageModel,
    alice: User,
    launched: list[int],
    django_capture_on_commit_callbacks: Callable[..., Any],
    request_body: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api(alice).post("/api/jobs/", request_body, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code
    assert message in response.json()["message"]
    assert Job.objects.count() == 0 and callbacks == [] and launched == []


def test_field_errors_come_with_their_field_tree(model: LanguageModel, alice: User) -> None:
    response = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": "hi", "temperature": 3}, format="json")
    assert response.json()["fields"] == {"temperature": ["Ensure this value is less than or equal to 2."]}


# --- cancelling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [Job.State.QUEUED, Job.State.RUNNING])
def test_the_owner_cancels_a_job_once(model: LanguageModel, alice: User, state: str) -> None:
    job = make_job(alice, model, state)
    response = api(alice).post(f"/api/jobs/{job.pk}/cancel/")
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["error_code"]) == ("cancelled", "cancelled")
    assert Job.objects.get().state == Job.State.CANCELLED
    again = api(alice).post(f"/api/jobs/{job.pk}/cancel/")
    assert again.status_code == 409
    assert again.json() == {"code": "job_finished", "message": f"job {job.pk} is already cancelled"}


def test_cancelling_a_queued_job_ends_its_stream(
    model: LanguageModel, alice: User, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(alice, model, Job.State.QUEUED)
    layer = get_channel_layer()
    listener = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"job-{job.pk}", listener)
    with django_capture_on_commit_callbacks(execute=True):
        assert api(alice).post(f"/api/jobs/{job.pk}/cancel/").status_code == 200
    event = async_to_sync(layer.receive)(listener)
    assert (event["type"], event["state"], event["error_code"]) == ("job.done", "cancelled", "cancelled")


def test_a_finished_job_cannot_be_cancelled(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, Job.State.DONE)
    response = api(alice).post(f"/api/jobs/{job.pk}/cancel/")
    assert (response.status_code, response.json()["code"]) == (409, "job_finished")
    assert Job.objects.get().state == Job.State.DONE


# --- schema and docs -------------------------------------------------------------------------------------------


def test_the_openapi_schema_lists_the_buyer_api() -> None:
    response = api().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "Compute market API"
    paths = {"/api/jobs/", "/api/jobs/{job_id}/", "/api/jobs/{job_id}/cancel/", "/api/models/", "/api/providers/"}
    assert paths <= set(schema["paths"])
    assert {"get", "post"} <= set(schema["paths"]["/api/jobs/"])
    assert "post" in schema["paths"]["/api/jobs/{job_id}/cancel/"]


def test_the_api_docs_page_is_served() -> None:
    response = api().get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger" in response.content.lower() and b"/api/schema/" in response.content
