"""The marketplace's pages in real headless Chromium (Debian's, driven by Playwright) on the whole stack: sign up and
get the grant, API tokens made and revoked on the account page, a job posted on the buyer console with its live
quote, its answer streamed on its page equal to the API's, its pipeline and its cost after settlement, a round
arriving live on the dashboard, the provider console's figures equal to the ledger's, a 402 shown as the API's
message, a bid below the price told why it waits and cancelled (from the keyboard alone), another buyer's job out
of reach, and no console error on any page.

Every page must fit a 375 px wide phone without a horizontal scroll. With SCREENS=<folder> (`make screens`) each
test also saves the page it exercises at desktop (1280x800) and phone (390x844) width, full page, as
<page>-desktop.png and <page>-phone.png.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from worker_web.testing.site_driver import ConsoleErrors, Site, integers, launch_browser, number, wait_ready
from worker_web.testing.tab_driver import playwright_driver

pytestmark = pytest.mark.slow

PASSWORD = "marketplace-ui-password"
MODEL = "smollm2-135m"
STORY = "Write a short story about a lighthouse keeper and a storm."
BOB_PROMPT = "Name three colours."
SCREENS = Path(os.environ["SCREENS"]) if os.environ.get("SCREENS") else None
JOB_MS = 240_000  # a bid waits for a round, then 40 tokens through three shards on a loaded 2-core machine

# Records every distinct text #job-text shows, from the page's first paint on: a streamed answer shows several.
WATCH_JOB_TEXT = """
window.jobTexts = [];
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("job-text");
  if (!box) return;
  const record = () => {
    const text = box.textContent;
    if (text && window.jobTexts[window.jobTexts.length - 1] !== text) window.jobTexts.push(text);
  };
  record();
  new MutationObserver(record).observe(box, {childList: true, subtree: true, characterData: true});
});
"""
# After posting: on the new job's page, or a new row in the history (its id not among those the buyer had).
POSTED = """(known) => {
  const path = location.pathname.match(/^\\/buy\\/jobs\\/(\\d+)\\/$/);
  if (path) return path[1];
  const rows = [...document.querySelectorAll("table#jobs tr[data-job-id]")];
  const row = rows.find((r) => !known.includes(r.dataset.jobId));
  return row ? row.dataset.jobId : false;
}"""
NEW_ROUND = """(known) => [...document.querySelectorAll("table#rounds tr[data-round-id]")]
  .some((row) => !known.includes(row.dataset.roundId))"""


@pytest.fixture(scope="module")
def browser(market: Any) -> Iterator[Any]:
    market.ensure_providers(3)
    for user in ("alice", "carol"):
        market.manage("issue_token", user, "--password", PASSWORD)
    with playwright_driver() as driver, launch_browser(driver) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def console() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture(autouse=True)
def no_console_errors(console: ConsoleErrors) -> Iterator[ConsoleErrors]:
    """Fails the test when any page it opened logged an error or threw (what it caused on purpose aside)."""
    console.reset()
    yield console
    assert not console.seen, "errors in the browser's console:\n" + "\n".join(console.seen)


@pytest.fixture
def visitor(market: Any, browser: Any, console: ConsoleErrors) -> Iterator[Callable[[], Site]]:
    """Makes visitors (a browser context each: their own cookies), closed after the test."""
    sites: list[Site] = []

    def make() -> Site:
        sites.append(Site(browser, market.url, console, screens=SCREENS))
        return sites[-1]

    yield make
    for site in sites:
        site.close()


@pytest.fixture(scope="module")
def bob_job(market: Any) -> dict[str, Any]:
    """A job of bob's, done and settled (carol's providers served it, so carol has earned)."""
    job = market.submit(market.bob, model=MODEL, prompt=BOB_PROMPT, max_new_tokens=16)
    return finish(market, job["id"], market.bob)


def finish(market: Any, job_id: int, token: str) -> dict[str, Any]:
    """Streams the job to its end, on a thread of its own (Playwright's sync API keeps an event loop on this one),
    and returns it as the API shows it."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(market.stream, job_id, token).result()
    status, job = market.api("GET", f"/api/jobs/{job_id}/", token=token)
    assert status == 200 and job["state"] == "done" and job["settled_at"] is not None, job
    return dict(job)


def fresh_name() -> str:
    return f"ui-{uuid.uuid4().hex[:10]}"


def digits_pattern(value: int) -> str:
    """A regex for an integer written with or without thousands separators."""
    return r"(?<!\d)" + r"[,\s\u00a0\u202f']?".join(str(value)) + r"(?!\d)"


def new_key(page: Any) -> str:
    """The key #token-new shows once (after the page that made it has loaded)."""
    box = page.locator("#token-new")
    expect(box).to_have_text(re.compile(r"[\w-]{20,}"), timeout=30_000)
    return str(max(re.findall(r"[\w-]{20,}", box.text_content() or ""), key=len))


def ask_for_a_quote(page: Any) -> None:
    """The buyer console with a prompt written in and its live quote shown (for its screenshots)."""
    page.fill("#prompt", STORY)
    expect(page.locator("#quote")).to_have_text(re.compile(r"\d"), timeout=30_000)


def test_sign_up_gives_the_grant_and_the_account_page_creates_and_revokes_api_tokens(
    market: Any, visitor: Callable[[], Site]
) -> None:
    name, site = fresh_name(), visitor()
    page = site.sign_up(name, PASSWORD)
    wait_ready(page)
    expect(page.locator("#nav-account")).to_have_text(name)

    page.fill("#token-name", "ui-test")
    page.click("#token-create")
    key = new_key(page)
    status, balances = market.api("GET", "/api/account/", token=key)
    assert status == 200, balances
    assert balances["available"] == int(market.env["SIGNUP_GRANT"]) > 0 and balances["escrow"] == 0
    shown = {field: number(page, f"#balance-{field}") for field in ("available", "escrow", "pending", "released")}
    released = balances["earnings"]
    assert shown == {
        "available": balances["available"],
        "escrow": 0,
        "pending": balances["pending"],
        "released": released,
    }

    row = page.locator("table#tokens tr[data-token-id]", has_text="ui-test")
    expect(row).to_have_count(1)
    site.shoot(page, "account")
    row.locator("button.token-revoke").click()
    expect(row.locator("button.token-revoke")).to_have_count(0)  # the row is gone, or shows it revoked
    status, refusal = market.api("GET", "/api/account/", token=key)
    assert status == 401, refusal


def test_a_job_posted_on_the_buyer_console_streams_its_answer_and_shows_its_pipeline_and_cost(
    market: Any, visitor: Callable[[], Site]
) -> None:
    site = visitor()
    page = site.sign_in("alice", PASSWORD, then="/buy/")
    wait_ready(page)
    page.add_init_script(WATCH_JOB_TEXT)
    _, earlier = market.api("GET", "/api/jobs/", token=market.alice)

    page.fill("#prompt", STORY)
    page.fill("#max-new-tokens", "40")
    query = urllib.parse.urlencode({"model": MODEL, "prompt": STORY, "max_new_tokens": 40})
    status, quote = market.api("GET", f"/api/quote/?{query}", token=market.alice)
    assert status == 200, quote
    live_quote = f"{digits_pattern(quote['price'])}|{digits_pattern(quote['bid'])}"
    expect(page.locator("#quote")).to_have_text(re.compile(live_quote), timeout=30_000)

    page.click("#post-job")
    posted = page.wait_for_function(POSTED, arg=[str(j["id"]) for j in earlier], timeout=30_000)
    job_id = int(posted.json_value())
    if "/buy/jobs/" not in page.url:
        page.goto(f"/buy/jobs/{job_id}/")
    wait_ready(page)
    expect(page.locator("#pipeline [data-hop]")).to_have_count(3, timeout=JOB_MS)
    expect(page.locator("#job-state")).to_have_text(re.compile(r"\bdone\b"), timeout=JOB_MS)

    _, job = market.api("GET", f"/api/jobs/{job_id}/", token=market.alice)
    assert job["state"] == "done" and job["text"], job
    assert page.locator("#job-text").text_content() == job["text"]
    streamed = page.evaluate("() => window.jobTexts")
    assert len(streamed) >= 2 and streamed[-1] == job["text"], f"the answer was not streamed: {streamed}"
    for hop in job["pipeline"]:
        expect(page.locator("#pipeline")).to_contain_text(hop["provider_name"])

    cost_table = page.locator("table#job-cost")
    expect(cost_table).to_be_visible(timeout=60_000)
    _, cost = market.api("GET", f"/api/jobs/{job_id}/cost/", token=market.alice)
    shown = integers(cost_table.inner_text())  # inner_text: cells apart (text_content runs them together)
    figures = {cost[f] for f in ("escrowed", "paid", "fee", "refunded")} | {line["payment"] for line in cost["lines"]}
    assert figures <= shown, (cost, shown)
    site.shoot(page, "job")

    console_page = site.open("/buy/")
    expect(console_page.locator(f'table#jobs tr[data-job-id="{job_id}"]')).to_have_count(1)
    ask_for_a_quote(console_page)
    site.shoot(console_page, "buy", prepare=ask_for_a_quote)


def test_the_dashboard_shows_a_new_round_live_without_a_reload(market: Any, visitor: Callable[[], Site]) -> None:
    site = visitor()
    page = site.open("/")
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate("() => { window.sameDocument = true; }")
    known = page.eval_on_selector_all("table#rounds tr[data-round-id]", "rows => rows.map((r) => r.dataset.roundId)")

    job = market.submit(market.bob, model=MODEL, prompt=BOB_PROMPT, max_new_tokens=8)
    page.wait_for_function(NEW_ROUND, arg=known, timeout=JOB_MS)
    done = finish(market, job["id"], market.bob)
    expect(page.locator(f'table#rounds tr[data-round-id="{done["auction_round"]}"]')).to_have_count(1)
    assert page.evaluate("() => window.sameDocument") is True, "the page reloaded"
    expect(page.locator("#live-status")).to_have_text("live")

    _, providers = market.api("GET", "/api/providers/", token=market.alice)
    assert number(page, "#providers-online") == len(providers)
    site.shoot(page, "dashboard")


def test_the_provider_console_shows_the_ledgers_earnings_and_the_online_agents(
    market: Any, visitor: Callable[[], Site], bob_job: dict[str, Any]
) -> None:
    site = visitor()
    page = site.sign_in("carol", PASSWORD, then="/provide/")
    wait_ready(page)

    def earnings() -> tuple[int, int]:
        status, body = market.api("GET", "/api/provider/earnings/", token=market.carol)
        assert status == 200, body
        return body["pending"], body["earnings"]

    # Beat releases earnings every few seconds: compare with a reading the ledger kept on both sides of the page's.
    for _ in range(10):
        before = earnings()
        page.reload()
        wait_ready(page)
        shown = number(page, "#console-pending"), number(page, "#console-released")
        if earnings() == before:
            break
    assert shown == before and sum(before) > 0, (shown, before)

    _, agents = market.api("GET", "/api/provider/capacity/", token=market.carol)
    online = [a for a in agents if a["kind"] == "headless" and a["state"] == "online"]
    assert len(online) == 3, agents
    for agent in online:
        expect(page.locator(f'table#console-capacity tr[data-provider-id="{agent["id"]}"]')).to_contain_text(
            agent["name"]
        )
    site.shoot(page, "provide")


def test_a_bid_above_the_balance_shows_the_apis_402_message_and_keeps_the_form(
    market: Any, visitor: Callable[[], Site], console: ConsoleErrors
) -> None:
    name, site = fresh_name(), visitor()
    page = site.sign_up(name, PASSWORD, shoot=False)
    page.goto("/buy/")
    wait_ready(page)
    too_much = int(market.env["SIGNUP_GRANT"]) + 1
    page.fill("#prompt", BOB_PROMPT)
    page.fill("#max-new-tokens", "16")
    page.fill("#max-price", str(too_much))
    token = market.manage("issue_token", name)
    bid = {"model": MODEL, "prompt": BOB_PROMPT, "max_new_tokens": 16, "max_price": too_much}
    status, refusal = market.api("POST", "/api/jobs/", token=token, body=bid)
    assert status == 402 and refusal["code"] == "insufficient_funds", refusal

    console.allow(r"status of 402")  # Chromium logs the refused POST; the page must show why
    page.click("#post-job")
    error = page.locator("#post-error")
    # The same refusal, but for the page's own attempt: the API numbers each attempt's job reference anew.
    message = r"job-\d+".join(re.escape(part) for part in re.split(r"job-\d+", refusal["message"]))
    expect(error).to_contain_text(re.compile(message))
    expect(error).to_be_visible()
    assert error.get_attribute("role") == "alert"
    expect(page.locator("#prompt")).to_have_value(BOB_PROMPT)
    assert "/buy/jobs/" not in page.url
    assert market.api("GET", "/api/jobs/", token=token)[1] == []


def test_another_buyers_job_page_is_not_found_and_shows_nothing_of_it(
    market: Any, visitor: Callable[[], Site], console: ConsoleErrors, bob_job: dict[str, Any]
) -> None:
    assert bob_job["text"]
    console.allow(r"status of 404")
    page = visitor().sign_in("alice", PASSWORD, then="/buy/")
    response = page.goto(f"/buy/jobs/{bob_job['id']}/")
    assert response is not None and response.status == 404
    assert bob_job["text"] not in page.content() and BOB_PROMPT not in page.content()

    anonymous = visitor().open(f"/buy/jobs/{bob_job['id']}/", ready=False)
    assert "/signin/" in anonymous.url
    assert bob_job["text"] not in anonymous.content() and BOB_PROMPT not in anonymous.content()


def test_a_bid_below_the_price_says_why_it_waits_and_is_cancelled_all_from_the_keyboard(
    market: Any, visitor: Callable[[], Site]
) -> None:
    """Keyboard only: write the prompt, tab through the form, post with Enter. A bid of 1 base unit loses every round:
    its page says why, live (the stream's `bid` event), and cancelling it refunds the escrow in full."""
    site = visitor()
    page = site.sign_in("alice", PASSWORD, then="/buy/")
    wait_ready(page)
    page.focus("#prompt")
    page.keyboard.type(BOB_PROMPT)
    page.keyboard.press("Tab")
    expect(page.locator("#max-new-tokens")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("8")
    expect(page.locator("#quote")).to_have_text(re.compile(r"\d"), timeout=30_000)
    page.keyboard.press("Tab")
    expect(page.locator("#max-price")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("1")
    page.keyboard.press("Tab")
    expect(page.locator("#post-job")).to_be_focused()
    page.keyboard.press("Enter")

    page.wait_for_url(re.compile(r"/buy/jobs/\d+/$"), timeout=30_000)
    job_id = int(re.findall(r"/buy/jobs/(\d+)/$", page.url)[0])
    wait_ready(page)
    reason = page.locator("#job-reason")
    expect(reason).to_contain_text("lost the round", timeout=JOB_MS)
    expect(reason).to_contain_text("more than its maximum of 1")
    expect(page.locator("#job-state")).to_have_text("queued")

    page.focus("#cancel")
    page.keyboard.press("Enter")
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=30_000)
    status, job = market.api("GET", f"/api/jobs/{job_id}/", token=market.alice)
    assert status == 200 and job["state"] == "cancelled", job
    status, cost = market.api("GET", f"/api/jobs/{job_id}/cost/", token=market.alice)
    assert status == 200 and (cost["escrowed"], cost["paid"], cost["refunded"]) == (1, 0, 1), cost
