"""The provider console on /provide/: every figure it shows is the ledger's or the selectors' (the same as GET
/api/provider/console/, /api/provider/capacity/, /api/provider/earnings/ and /api/provider/audits/), only the
user's own agents are listed, and the tab's existing elements stay."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from ledger.models import PendingRelease
from market import selectors as market_selectors
from market import services
from market.models import Provider
from worker_web import selectors

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice() -> User:
    return services.account_open(username="alice")[0]


@pytest.fixture
def bob() -> User:
    return services.account_open(username="bob")[0]


def agent(user: User, name: str, **fields: Any) -> Provider:
    defaults = {"backend": "wasm", "kind": "browser", "slots": 2, "state": Provider.State.ONLINE}
    return Provider.objects.create(user=user, name=name, **{**defaults, **fields})


def earn(provider: User, buyer: User, amount: int, job: int) -> None:
    """A settled job paying `provider` (its earnings pending until the challenge window closes)."""
    ledger_services.escrow_for_job(user=buyer, amount=amount, job_ref=f"job-{job}")
    ledger_services.settle_job(job_ref=f"job-{job}", buyer=buyer, payouts=[(provider, amount)], fee=0)


def text_of(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert found, f"#{element_id} is missing"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def page(user: User) -> str:
    client = Client()
    client.force_login(user)
    response = client.get("/provide/")
    assert response.status_code == 200
    return str(response.content.decode())


def api(user: User, path: str) -> Any:
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200, response.content
    return response.json()


def test_the_capacity_table_shows_each_agent_as_the_market_sees_it(alice: User, bob: User) -> None:
    fast = agent(alice, "fast", ns_per_layer_token=40_000, reliability_permille=900, posted_ask=1)
    new = agent(alice, "new", state=Provider.State.OFFLINE)
    agent(bob, "bobs")
    html = page(alice)
    rows = dict(re.findall(r'<tr data-provider-id="(\d+)">(.*?)</tr>', html, re.S))
    assert set(rows) == {str(fast.pk), str(new.pk)}  # nobody else's agents
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[str(fast.pk)], re.S)]
    ask = market_selectors.provider_ask(fast)
    assert ask == max(market_selectors.platform_floor(fast), 1) > 0
    assert cells == ["fast", "wasm", "2", "0", "40000", str(ask), "900", "online"]
    capacity = {row["id"]: row for row in api(alice, "/api/provider/capacity/")}
    assert capacity[fast.pk]["ask"] == ask and capacity[new.pk]["ask"] is None
    console = {row["id"]: row for row in api(alice, "/api/provider/console/")["capacity"]}
    assert console[fast.pk]["ask"] == ask and console[fast.pk]["speed_ns_per_layer_token"] == 40_000
    assert "—" in rows[str(new.pk)] and "offline" in rows[str(new.pk)]  # not benchmarked: no ask yet


def test_earnings_pending_released_and_per_day_are_the_ledgers(alice: User, bob: User) -> None:
    earn(alice, bob, 300, job=1)
    earn(alice, bob, 50, job=2)
    PendingRelease.objects.filter(job_ref="job-1").update(release_after=timezone.now() - timedelta(seconds=1))
    assert ledger_services.release_due_earnings(now=timezone.now()) == 1
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.pending, balances.earnings) == (50, 300)
    html = page(alice)
    assert text_of(html, "console-pending") == "50" and text_of(html, "console-released") == "300"
    series = market_selectors.provider_earnings_series(provider=alice)
    today = int(timezone.now().timestamp()) // 86400 * 86400
    assert len(series) == 30 and series[-1] == {"day": today, "amount": 350}
    assert [p["day"] for p in series] == [today - (29 - n) * 86400 for n in range(30)]
    assert sum(p["amount"] for p in series) == 350  # days without a settlement are 0
    earnings = api(alice, "/api/provider/earnings/")
    assert (earnings["pending"], earnings["earnings"], earnings["series"]) == (50, 300, series)
    assert 'id="chart-earnings"' in html
    rendered = re.search(r'id="console-data"[^>]*>(.*?)</script>', html, re.S)
    assert rendered and '"amount": 350' in rendered.group(1)  # the chart's first data, server-rendered
    assert sum(p["amount"] for p in api(bob, "/api/provider/earnings/")["series"]) == 0  # not alice's


def test_audits_reliability_and_stake_are_the_selectors(alice: User, settings: Any) -> None:
    settings.CHAIN_RPC_URL = ""
    agent(alice, "a", audits_passed=5, audits_failed=1, reliability_permille=800)
    agent(alice, "b", audits_passed=2, reliability_permille=1000)
    html = page(alice)
    audits = api(alice, "/api/provider/audits/")["providers"]
    assert text_of(html, "console-audits-passed") == str(sum(p["audits_passed"] for p in audits)) == "7"
    assert text_of(html, "console-audits-failed") == str(sum(p["audits_failed"] for p in audits)) == "1"
    assert text_of(html, "console-reliability") == "900"
    assert text_of(html, "console-stake") == "—" and text_of(html, "console-unbonding") == "—"  # no chain
    console = api(alice, "/api/provider/console/")
    assert (console["audits_passed"], console["audits_failed"], console["reliability_permille"]) == (7, 1, 900)
    assert console == {**selectors.provider_console(user=alice), "capacity": console["capacity"]}


def test_a_new_account_sees_an_empty_console_and_the_tabs_elements(alice: User) -> None:
    html = page(alice)
    assert "No agent yet" in html and text_of(html, "console-reliability") == "—"
    assert re.search(r'<p id="chart-earnings-empty" class="muted">No settled job', html)  # shown, not hidden
    assert text_of(html, "console-pending") == "0" and text_of(html, "console-audits-passed") == "0"
    for kept in ("benchmark", "start", "stop", "name", "ask", "stat-earned", "stat-stake", "stat-audits", "log"):
        assert f'id="{kept}"' in html


def test_the_console_api_needs_a_signed_in_user() -> None:
    assert Client().get("/api/provider/console/").status_code == 401
