"""The buyer console (/buy/) and the job page (/buy/jobs/<id>/), server-rendered: the ids the browser tests and
the JS modules rely on, only the buyer's own jobs (owner / other buyer / anonymous), the history's filters through
`selectors.jobs_of_buyer`, the job's state, text, pipeline and cost embedded, and the buyer's text escaped."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from market import selectors
from market.models import Job, LanguageModel

pytestmark = pytest.mark.django_db

CONSOLE_IDS = ["prompt", "model", "max-new-tokens", "max-price", "quote", "post-job", "post-error", "jobs", "filters"]
JOB_IDS = ["job-state", "job-text", "job-reason", "pipeline", "cancel", "challenge", "job-error", "verification"]

PIPELINE = [
    {
        "hop": 0,
        "shard": "tiny:f32:0-2",
        "provider": 7,
        "provider_name": "tab-one",
        "backend": "webgpu",
        "session": "s0",
        "channel": "specific.secret!abc",
        "from_step": 0,
        "until_step": 2,
        "ended": "deadline: no answer",
    },
    {
        "hop": 1,
        "shard": "tiny:f32:2-4",
        "provider": 8,
        "provider_name": "native-box",
        "backend": "native",
        "session": "s1",
        "channel": "specific.secret!def",
        "from_step": 0,
        "until_step": 5,
        "ended": "done",
    },
    {
        "hop": 0,
        "shard": "tiny:f32:0-2",
        "provider": 9,
        "provider_name": "tab-two",
        "backend": "wasm",
        "session": "s2",
        "channel": "specific.secret!ghi",
        "from_step": 2,
        "until_step": 5,
        "ended": "done",
    },
]


def make_job(buyer: User, model: LanguageModel, state: str = Job.State.QUEUED, **fields: Any) -> Job:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return Job.objects.create(buyer=buyer, model=model, state=state, **fields)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def ids_in(html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html))


def row_ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr data-job-id="(\d+)"', html)]


def embedded(html: str, element_id: str) -> Any:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    assert match is not None, f"no json_script {element_id}"
    return json.loads(match.group(1))


# --- who sees what -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/buy/", "/buy/jobs/1/"])
def test_a_signed_out_visitor_is_sent_to_sign_in(path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/signin/?next={path}"


def test_another_buyers_job_page_is_404_like_a_missing_one(model: LanguageModel, alice: User, bob: User) -> None:
    job = make_job(alice, model, text="alice's secret answer")
    assert signed_in(alice).get(f"/buy/jobs/{job.pk}/").status_code == 200
    for path in (f"/buy/jobs/{job.pk}/", f"/buy/jobs/{job.pk + 1000}/"):
        response = signed_in(bob).get(path)
        assert response.status_code == 404
        assert b"alice's secret answer" not in response.content


# --- the console ---------------------------------------------------------------------------------------------------


def test_the_console_has_the_form_the_history_and_the_models(model: LanguageModel, alice: User) -> None:
    response = signed_in(alice).get("/buy/")
    html = response.content.decode()
    assert response.status_code == 200
    assert set(CONSOLE_IDS) <= ids_in(html) and "filter-state" in ids_in(html)
    assert re.search(r'<p id="post-error"[^>]*role="alert"', html)
    assert f'<option value="tiny" data-quant="{model.quant}">' in html
    for field in ("prompt", "model", "max-new-tokens", "max-price", "filter-state"):
        assert f'<label for="{field}"' in html or f'<label for="{field}">' in html
    config = embedded(html, "buy-config")
    assert config == {"quote": "/api/quote/", "jobs": "/api/jobs/", "jobPage": "/buy/jobs/0/"}
    assert 'src="/static/market/buy.js"' in html


def test_the_history_holds_only_the_buyers_jobs_newest_first(model: LanguageModel, alice: User, bob: User) -> None:
    mine = [make_job(alice, model), make_job(alice, model, Job.State.DONE), make_job(alice, model)]
    theirs = make_job(bob, model)
    html = signed_in(alice).get("/buy/").content.decode()
    assert row_ids(html) == [job.pk for job in reversed(mine)]
    assert f'data-job-id="{theirs.pk}"' not in html
    assert row_ids(signed_in(bob).get("/buy/").content.decode()) == [theirs.pk]


def test_the_history_shows_what_a_settled_job_paid_and_got_back(model: LanguageModel, alice: User) -> None:
    cost = {"paid": 1234, "refunded": 8766, "lines": []}
    job = make_job(alice, model, Job.State.DONE, max_price=10_000, cost=cost, settled_at=timezone.now())
    html = signed_in(alice).get("/buy/").content.decode()
    row = re.search(rf'<tr data-job-id="{job.pk}".*?</tr>', html, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">(\d+)</td>', row.group(0))
    assert cells[-3:] == ["10000", "1234", "8766"]


def test_the_history_filters_by_state_model_and_days(model: LanguageModel, alice: User) -> None:
    other = LanguageModel.objects.create(name="other", quant="q4", config=model.config, tokenizer_sha256="0" * 64)
    queued, done = make_job(alice, model), make_job(alice, model, Job.State.DONE)
    elsewhere = make_job(alice, other)
    old = make_job(alice, model)
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    client = signed_in(alice)

    def rows(query: str) -> list[int]:
        response = client.get(f"/buy/?{query}")
        assert response.status_code == 200
        return row_ids(response.content.decode())

    assert rows("state=done") == [done.pk]
    assert rows("model=other") == [elsewhere.pk]
    assert rows("state=queued&model=tiny") == [old.pk, queued.pk]  # newest first: by id
    today = timezone.now().date()
    assert rows(f"since={today.isoformat()}") == [elsewhere.pk, done.pk, queued.pk]
    assert rows(f"until={(today - timedelta(days=5)).isoformat()}") == [old.pk]
    assert rows("state=&model=&since=&until=") == [old.pk, elsewhere.pk, done.pk, queued.pk]  # empty: no filter
    html = client.get("/buy/?state=done").content.decode()
    assert '<option value="done" selected>' in html
    api = APIClient()
    api.force_authenticate(alice)
    for query in ("state=done", "model=other", "state=queued&model=tiny", f"since={today}", "until=2000-01-01"):
        assert [job["id"] for job in api.get(f"/api/jobs/?{query}").json()] == rows(query)  # the API filters alike


def test_a_bad_filter_is_a_clear_error_and_filters_nothing(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model)
    response = signed_in(alice).get("/buy/?state=bogus&since=yesterday")
    html = response.content.decode()
    assert response.status_code == 400
    assert re.search(r'role="alert"[^>]*>state must be one of queued, .*; since must be a date', html)
    assert row_ids(html) == [job.pk]


def test_the_buyers_text_is_escaped_in_the_history(model: LanguageModel, alice: User) -> None:
    make_job(alice, model, messages=[{"role": "user", "content": "<img src=x onerror=alert(1)>"}])
    html = signed_in(alice).get("/buy/").content.decode()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# --- the selector's filters ----------------------------------------------------------------------------------------


def test_jobs_of_buyer_filters_by_model_name_and_creation_time(model: LanguageModel, alice: User, bob: User) -> None:
    other = LanguageModel.objects.create(name="other", quant="q4", config=model.config, tokenizer_sha256="0" * 64)
    first, second = make_job(alice, model), make_job(alice, other)
    make_job(bob, other)
    Job.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=2))
    hour_ago = timezone.now() - timedelta(hours=1)
    assert list(selectors.jobs_of_buyer(buyer=alice, model="other")) == [second]
    assert list(selectors.jobs_of_buyer(buyer=alice, model="nope")) == []
    assert list(selectors.jobs_of_buyer(buyer=alice, since=hour_ago)) == [second]
    assert list(selectors.jobs_of_buyer(buyer=alice, before=hour_ago)) == [first]
    assert list(selectors.jobs_of_buyer(buyer=alice, model="tiny", state=Job.State.QUEUED, before=hour_ago)) == [first]


# --- the job page --------------------------------------------------------------------------------------------------


def test_the_job_page_embeds_state_text_and_the_pipeline(model: LanguageModel, alice: User) -> None:
    timings = {"hop_round_trip_ms_median": [12.5, 30.25], "prefill_s": 0.1, "decode_tokens_per_s": 40.0}
    job = make_job(
        alice, model, Job.State.RUNNING, text="Hello <b>there</b>", tokens=[1, 2, 3], pipeline=PIPELINE, timings=timings
    )
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    assert set(JOB_IDS) <= ids_in(html)
    assert re.search(r'<span id="job-state"[^>]*>running</span>', html)
    assert re.search(r'<div id="job-text"[^>]*>Hello &lt;b&gt;there&lt;/b&gt;</div>', html)
    assert re.search(r'<p id="job-error"[^>]*role="alert"', html)
    # One box per hop, with its layers, every placement that served it (provider, backend) and its median step time.
    hops = re.findall(r'<li class="hop" data-hop="(\d+)">(.*?)</li>', html, re.S)
    assert [int(hop) for hop, _ in hops] == [0, 1]
    first, second = hops[0][1], hops[1][1]
    assert "layers 0-2" in first and "tab-one" in first and "tab-two" in first and "wasm" in first
    assert "replaced: deadline: no answer" in first
    assert '<span class="ms">12.5</span> ms/step' in first
    assert "native-box" in second and "native" in second and "30.25" in second
    page = embedded(html, "job-page")
    assert page["job"]["state"] == "running" and page["job"]["text"] == "Hello <b>there</b>"
    assert [entry["provider_name"] for entry in page["job"]["pipeline"]] == ["tab-one", "native-box", "tab-two"]
    assert "secret" not in html  # the channels providers' slots were claimed on are the market's business
    assert page["urls"]["stream"] == f"/ws/jobs/{job.pk}/?follow=verification"
    assert page["verification"]["state"] == "unchecked"
    assert '<button type="button" id="cancel" class="danger">' in html  # a running job can be cancelled
    assert re.search(r'id="challenge"[^>]*disabled', html)  # not before it is done and settled


def test_a_waiting_bid_shows_why_it_lost_and_no_pipeline(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, error="lost the round: the cheapest pipeline free now asks 900 base units")
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    assert re.search(r'<p id="job-reason" class="reason">lost the round: the cheapest pipeline', html)
    assert 'data-hop="' not in html and "Not placed yet" in html
    assert embedded(html, "job-page")["job"]["pipeline"] == []


@pytest.mark.parametrize(
    ("state", "error", "shown"),
    [
        (Job.State.EXPIRED, "no providers took the bid before it expired", "expired: the bid found no providers"),
        (Job.State.CANCELLED, "cancelled by the buyer", "cancelled: cancelled by the buyer"),
        (Job.State.FAILED, "no provider is free to serve shard tiny:f32:0-2", "failed: no provider is free"),
    ],
)
def test_an_ended_job_says_how_it_ended(model: LanguageModel, alice: User, state: str, error: str, shown: str) -> None:
    job = make_job(alice, model, state, error=error, settled_at=timezone.now())
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    assert "It never ran on providers." in html and "You may challenge" not in html
    end = re.search(r'<p id="job-end" class="error">\s*(.*?)\s*</p>', html, re.S)
    assert end is not None and end.group(1).startswith(shown)
    assert '<p id="job-reason" class="reason" hidden>' in html  # a waiting bid's reason, not an ended job's
    assert re.search(r'id="cancel"[^>]*disabled', html)


def test_a_settled_job_shows_its_cost_line_by_line(model: LanguageModel, alice: User) -> None:
    line = {
        "hop": 1,
        "shard": "tiny:f32:2-4",
        "provider": 8,
        "provider_name": "native-box",
        "from_step": 0,
        "until_step": 5,
        "layer_tokens": 24,
        "unit_price": 7,
        "payment": 168,
        "fee": 8,
        "provider_receipt": 160,
    }
    cost = {
        "max_price": 1000,
        "escrowed": 1000,
        "paid": 168,
        "fee": 8,
        "provider_receipts": 160,
        "refunded": 832,
        "lines": [line],
        "platform_paid": 0,
        "platform_lines": [],
    }
    job = make_job(
        alice, model, Job.State.DONE, text="ok", pipeline=PIPELINE[1:2], cost=cost, settled_at=timezone.now()
    )
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    table = re.search(r'<table id="job-cost">.*?</table>', html, re.S)
    assert table is not None
    row = re.search(r'<tr data-hop="1">(.*?)</tr>', table.group(0), re.S)
    assert row is not None
    assert re.findall(r'<td class="num[^"]*">(\d+)</td>', row.group(1)) == ["24", "7", "168", "8", "160"]
    assert '<td class="num" id="cost-refunded">832</td>' in table.group(0)
    assert '<td class="num" id="cost-paid">168</td>' in table.group(0)
    assert not re.search(r'id="challenge"[^>]*disabled', html)  # done and settled: it may be challenged
    assert "You may challenge the answer until" in html


def test_an_unsettled_job_has_no_cost_table_yet(model: LanguageModel, alice: User) -> None:
    job = make_job(alice, model, Job.State.DONE, text="ok")
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    assert 'id="job-cost"' not in html and "Settling…" in html


def test_the_prompt_is_escaped_on_the_job_page(model: LanguageModel, alice: User) -> None:
    attack = "</script><script>alert(1)</script>"
    job = make_job(alice, model, messages=[{"role": "user", "content": attack}], text=attack)
    html = signed_in(alice).get(f"/buy/jobs/{job.pk}/").content.decode()
    assert attack not in html and "<script>alert(1)" not in html
    assert embedded(html, "job-page")["job"]["messages"][0]["content"] == attack


def test_a_job_id_beyond_any_row_is_404_not_500(alice: User) -> None:
    assert signed_in(alice).get("/buy/jobs/99999999999999999999999/").status_code == 404


def test_a_date_at_the_end_of_the_calendar_is_a_clear_error(alice: User) -> None:
    response = signed_in(alice).get("/buy/?until=9999-12-31")
    assert response.status_code == 400 and b"until must be a date (YYYY-MM-DD)" in response.content
