"""The market REST API: who sees what (owner / other user / anonymous) on every endpoint, how a bid is checked and
escrowed before anything is stored, the auction nudged once its row is committed, cancelling and its refund,
balances, capacity, earnings, auction rounds, and the OpenAPI schema and docs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from inference import wire
from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from ledger.models import PendingRelease
from market import model_files, services
from market.models import AuctionRound, Job, LanguageModel, Provider

pytestmark = pytest.mark.django_db

CONTEXT = 256  # inference.tiny.TINY_CONFIG.max_context


GRANT = 1_000_000  # settings.SIGNUP_GRANT


def api(user: User | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def nudged(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Nudges of the auction; no round runs in these tests unless one calls services.clear_market."""
    calls: list[None] = []
    monkeypatch.setattr("market.scheduling.auction_nudge", lambda: calls.append(None))
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
        ("get", "/api/jobs/{id}/cost/"),
        ("get", "/api/jobs/{id}/proof/"),
        ("get", "/api/account/"),
        ("get", "/api/account/chain/"),
        ("post", "/api/account/withdraw/"),
        ("get", "/api/provider/capacity/"),
        ("get", "/api/provider/earnings/"),
        ("get", "/api/auction/rounds/"),
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


def test_the_job_list_filters_by_state_so_a_buyer_sees_its_open_bids(model: LanguageModel, alice: User) -> None:
    bid, _ = make_job(alice, model), make_job(alice, model, Job.State.DONE)
    assert [job["id"] for job in api(alice).get("/api/jobs/?state=queued").json()] == [bid.pk]
    refused = api(alice).get("/api/jobs/?state=open")
    assert (refused.status_code, refused.json()["code"]) == (400, "bad_filter")


def test_the_owner_reads_a_job(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model)
    body = api(alice).get(f"/api/jobs/{job.pk}/").json()
    assert (body["id"], body["state"], body["model"], body["quant"]) == (job.pk, "queued", "tiny", "f32")
    assert body["stream"] == f"/ws/jobs/{job.pk}/"
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "path", ["/api/jobs/{id}/", "/api/jobs/{id}/cancel/", "/api/jobs/{id}/cost/", "/api/jobs/{id}/proof/"]
)
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


def test_a_prompt_becomes_an_escrowed_bid_and_the_auction_is_nudged_after_commit(
    model: LanguageModel, alice: User, nudged: list[None], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": "hello there"}, format="json")
        assert nudged == []  # not before the row is committed
    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(callbacks) == 1 and len(nudged) == 1
    job = Job.objects.get()
    assert (job.pk, job.buyer, job.state, job.max_new_tokens, job.seed) == (body["id"], alice, "queued", 64, None)
    assert job.messages == [{"role": "user", "content": "hello there"}]
    expected = model_files.model_tokenizer(model).encode_chat(job.messages)
    assert body["prompt_tokens"] == job.prompt_tokens == len(expected)
    # The default bid: DEFAULT_BID_PER_LAYER_TOKEN (50) for each of 4 layers × (prompt + 64 new tokens).
    assert body["max_price"] == job.max_price == 50 * 4 * (len(expected) + 64)
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.available, balances.escrow) == (GRANT - job.max_price, job.max_price)
    assert ledger_selectors.escrow_held(user=alice, job_ref=f"job-{job.pk}") == job.max_price
    assert job.expires_at is not None
    assert abs((job.expires_at - job.created_at).total_seconds() - 600) < 5  # BID_TTL_SECONDS


def test_a_bid_names_its_price_and_expiry(model: LanguageModel, alice: User, nudged: list[None]) -> None:
    request = {"model": "tiny", "prompt": "hi", "max_price": 12_345, "expires_in_seconds": 30}
    body = api(alice).post("/api/jobs/", request, format="json").json()
    job = Job.objects.get()
    assert body["max_price"] == job.max_price == 12_345
    assert job.expires_at is not None
    assert abs((job.expires_at - job.created_at).total_seconds() - 30) < 5
    assert ledger_selectors.balances_of(user=alice).escrow == 12_345


def test_a_bid_beyond_the_balance_is_payment_required_and_changes_nothing(
    model: LanguageModel, alice: User, nudged: list[None], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api(alice).post(
            "/api/jobs/", {"model": "tiny", "prompt": "hi", "max_price": GRANT + 1}, format="json"
        )
    assert (response.status_code, response.json()["code"]) == (402, "insufficient_funds")
    assert f"needs {GRANT + 1} base units in escrow; you have {GRANT}" in response.json()["message"]
    assert Job.objects.count() == 0 and callbacks == [] and nudged == []
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.available, balances.escrow) == (GRANT, 0)


def test_with_contribute_to_use_a_new_account_cannot_bid_until_it_earns(
    model: LanguageModel, settings: Any, nudged: list[None]
) -> None:
    settings.CONTRIBUTE_TO_USE = True
    newbie = services.account_open(username="newbie")[0]
    response = api(newbie).post("/api/jobs/", {"model": "tiny", "prompt": "hi", "max_price": 100}, format="json")
    assert (response.status_code, response.json()["code"]) == (402, "insufficient_funds")
    assert Job.objects.count() == 0


def test_a_chat_with_sampling_settings_is_stored_as_given(
    model: LanguageModel, alice: User, nudged: list[None]
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    request = {"model": "tiny", "quant": "f32", "messages": messages, "max_new_tokens": 5, "temperature": "0.7"}
    response = api(alice).post("/api/jobs/", {**request, "top_p": "0.9", "seed": 42}, format="json")
    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert job.messages == messages and job.max_new_tokens == 5 and job.seed == 42
    assert (str(job.temperature), str(job.top_p)) == ("0.70", "0.90")


def test_the_context_limit_counts_the_prompt_and_the_new_tokens(
    model: LanguageModel, alice: User, nudged: list[None]
) -> None:
    prompt = "hello there " * 4
    room = CONTEXT - len(model_files.model_tokenizer(model).encode_chat([{"role": "user", "content": prompt}]))
    over = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": room + 1}, format="json")
    assert over.status_code == 400 and over.json()["code"] == "context_overflow"
    assert f"model's context of {CONTEXT}" in over.json()["message"]
    fits = api(alice).post("/api/jobs/", {"model": "tiny", "prompt": prompt, "max_new_tokens": room}, format="json")
    assert fits.status_code == 201, fits.json()
    assert Job.objects.count() == 1


def test_a_prompt_whose_prefill_does_not_fit_in_one_frame_is_refused(
    model: LanguageModel, alice: User, nudged: list[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt's hidden states ([1, S, hidden] float16) cross between shards in one frame; the tiny model's would
    need 65,535 tokens, so the frame limit is lowered to make this prompt the longest that fits."""
    prompt = "hello there"
    tokens = len(model_files.model_tokenizer(model).encode_chat([{"role": "user", "content": prompt}]))
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
        pytest.param({"model": "tiny", "prompt": "hi", "max_price": 0}, 400, "invalid_input", "max_price:", id="free"),
        pytest.param(
            {"model": "tiny", "prompt": "hi", "max_price": "lots"}, 400, "invalid_input", "max_price:", id="price-text"
        ),
        pytest.param(
            {"model": "tiny", "prompt": "hi", "expires_in_seconds": 0}, 400, "invalid_input", "expires_in", id="ttl-0"
        ),
        pytest.param(
            {"model": "tiny", "prompt": "hi", "expires_in_seconds": 86_401},
            400,
            "invalid_input",
            "expires_in_seconds must be between 1 and 86400",
            id="ttl-too-long",
        ),
    ],
)
def test_a_refused_job_request_creates_nothing(
    model: LanguageModel,
    alice: User,
    nudged: list[None],
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
    assert Job.objects.count() == 0 and callbacks == [] and nudged == []
    assert ledger_selectors.balances_of(user=alice).available == GRANT


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


def test_cancelling_a_bid_refunds_its_escrow(model: LanguageModel, alice: User, nudged: list[None]) -> None:
    job_id = (
        api(alice).post("/api/jobs/", {"model": "tiny", "prompt": "hi", "max_price": 5_000}, format="json").json()["id"]
    )
    assert ledger_selectors.balances_of(user=alice).available == GRANT - 5_000
    assert api(alice).post(f"/api/jobs/{job_id}/cancel/").status_code == 200
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.available, balances.escrow) == (GRANT, 0)
    cost = api(alice).get(f"/api/jobs/{job_id}/cost/").json()
    assert (cost["state"], cost["escrowed"], cost["paid"], cost["refunded"], cost["lines"]) == (
        "cancelled",
        5_000,
        0,
        5_000,
        [],
    )


def test_a_finished_job_cannot_be_cancelled(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, Job.State.DONE)
    response = api(alice).post(f"/api/jobs/{job.pk}/cancel/")
    assert (response.status_code, response.json()["code"]) == (409, "job_finished")
    assert Job.objects.get().state == Job.State.DONE


# --- money, capacity, rounds -----------------------------------------------------------------------------------


def test_the_cost_of_a_job_not_settled_yet_is_a_conflict(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, Job.State.RUNNING)
    response = api(alice).get(f"/api/jobs/{job.pk}/cost/")
    assert (response.status_code, response.json()["code"]) == (409, "not_settled")


def test_the_proof_of_a_job_in_no_anchored_batch_is_a_conflict(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, Job.State.DONE)
    response = api(alice).get(f"/api/jobs/{job.pk}/proof/")
    assert (response.status_code, response.json()["code"]) == (409, "not_anchored")


def test_the_account_shows_your_own_balances(alice: User, bob: User) -> None:
    ledger_services.escrow_for_job(user=alice, amount=300, job_ref="job-x")
    account = api(alice).get("/api/account/").json()
    chain = account.pop("chain")
    assert account == {"available": GRANT - 300, "escrow": 300, "pending": 0, "earnings": 0, "stake": 0}
    # No chain configured here: no wallet, nothing staked, and no stake needed to take work.
    assert (chain["enabled"], chain["address"], chain["stake"], chain["can_take_work"]) == (False, None, 0, True)
    assert api(bob).get("/api/account/").json()["escrow"] == 0


def test_capacity_lists_only_your_own_providers_with_the_ask_the_platform_sets(alice: User, bob: User) -> None:
    mine = Provider.objects.create(user=alice, name="mine", slots=3, ns_per_layer_token=2_000_000)
    Provider.objects.create(user=bob, name="theirs", ns_per_layer_token=1_000_000)
    new = Provider.objects.create(user=alice, name="new")
    listed = api(alice).get("/api/provider/capacity/").json()
    assert [(p["id"], p["slots"]) for p in listed] == [(mine.pk, 3), (new.pk, 1)]
    # 10,000 base units per compute-second × 2 ms per layer-token at full reliability = 20 per layer-token.
    assert (listed[0]["ask"], listed[1]["ask"]) == (20, None)


def test_earnings_list_only_your_own_settlements(model: LanguageModel, alice: User, bob: User) -> None:
    ledger_services.escrow_for_job(user=alice, amount=1_000, job_ref="job-7")
    ledger_services.settle_job(job_ref="job-7", buyer=alice, payouts=[(bob, 600)], fee=30)
    mine = api(bob).get("/api/provider/earnings/").json()
    assert (mine["pending"], mine["earnings"]) == (600, 0)
    assert [(r["job"], r["amount"], r["state"]) for r in mine["settlements"]] == [("job-7", 600, "pending")]
    assert PendingRelease.objects.count() == 1
    assert sum(point["amount"] for point in mine["series"]) == 600  # the day's settlement, in the chart's series
    theirs = api(alice).get("/api/provider/earnings/").json()
    assert {k: v for k, v in theirs.items() if k != "series"} == {"pending": 0, "earnings": 0, "settlements": []}
    assert {point["amount"] for point in theirs["series"]} == {0}


def test_auction_rounds_are_listed_newest_first(alice: User) -> None:
    fields = {"requested": "auto", "solver": "greedy", "status": "heuristic", "wall_time_s": 0.01, "welfare": 5}
    counts = {"n_jobs": 2, "n_providers": 3, "n_winners": 1, "n_losers": 1, "n_placed": 1, "buyer_payments": 9}
    first = AuctionRound.objects.create(objective=5, fees=1, **fields, **counts)
    second = AuctionRound.objects.create(objective=7, fees=1, **fields, **counts)
    listed = api(alice).get("/api/auction/rounds/").json()
    assert [r["id"] for r in listed] == [second.pk, first.pk]
    assert listed[0]["solver"] == "greedy" and listed[0]["n_placed"] == 1


# --- schema and docs -------------------------------------------------------------------------------------------


def test_the_openapi_schema_lists_the_buyer_api() -> None:
    response = api().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "Compute market API"
    paths = {"/api/jobs/", "/api/jobs/{job_id}/", "/api/jobs/{job_id}/cancel/", "/api/models/", "/api/providers/"}
    paths |= {"/api/jobs/{job_id}/cost/", "/api/account/", "/api/provider/capacity/", "/api/provider/earnings/"}
    paths |= {"/api/auction/rounds/"}
    assert paths <= set(schema["paths"])
    assert {"get", "post"} <= set(schema["paths"]["/api/jobs/"])
    assert "post" in schema["paths"]["/api/jobs/{job_id}/cancel/"]


def test_the_api_docs_page_is_served() -> None:
    response = api().get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger" in response.content.lower() and b"/api/schema/" in response.content


def test_messages_too_big_for_the_context_are_refused_before_they_are_tokenised(
    model: LanguageModel, alice: User, nudged: list[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 messages of 100,000 characters once took seconds each to tokenise before context_overflow: the bytes alone
    now show that they cannot fit (one token stands for at most `max_token_bytes` bytes)."""
    tokenizer = model_files.model_tokenizer(model)
    most = (CONTEXT - 1) * tokenizer.max_token_bytes
    tokenised: list[int] = []
    real = type(tokenizer).encode_chat

    def counting(self: Any, messages: Any) -> Any:
        tokenised.append(1)
        return real(self, messages)

    monkeypatch.setattr(type(tokenizer), "encode_chat", counting)
    messages = [{"role": "user", "content": "x" * 100_000}] * 24
    huge = api(alice).post("/api/jobs/", {"model": "tiny", "messages": messages, "max_new_tokens": 1}, format="json")
    assert (huge.status_code, huge.json()["code"]) == (400, "context_overflow")
    assert f"at most {most} bytes can fit" in huge.json()["message"]
    just_over = api(alice).post(
        "/api/jobs/", {"model": "tiny", "prompt": "é" * (most // 2 + 1), "max_new_tokens": 1}, format="json"
    )
    assert (just_over.status_code, just_over.json()["code"]) == (400, "context_overflow")
    assert "bytes can fit" in just_over.json()["message"]
    quote = api(alice).get("/api/quote/", {"model": "tiny", "prompt": "x" * (most + 1), "max_new_tokens": 1})
    assert (quote.status_code, quote.json()["code"]) == (400, "context_overflow")
    assert tokenised == [] and Job.objects.count() == 0
    # At the limit the bytes prove nothing: the prompt is tokenised and refused by its tokens.
    body = {"model": "tiny", "prompt": "x" * most, "max_new_tokens": 1}
    at_limit = api(alice).post("/api/jobs/", body, format="json")
    assert (at_limit.status_code, at_limit.json()["code"]) == (400, "context_overflow")
    assert "exceeds" in at_limit.json()["message"] and tokenised == [1]


def test_a_chat_of_too_many_messages_is_refused(model: LanguageModel, alice: User, nudged: list[None]) -> None:
    messages = [{"role": "user", "content": "hi"}] * 1_001
    response = api(alice).post("/api/jobs/", {"model": "tiny", "messages": messages}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_input")
    assert response.json()["message"].startswith("messages:")
