"""The provider tab in real headless Chromium (Debian's, driven by Playwright) serving one shard of the real model
next to headless providers: exact output (and the shard inside the documented tolerance of native ONNX Runtime),
the download progress bar, the shard cache across reloads, a corrupt cached shard, failover when the tab is closed
mid-job, the benchmark button, clearing the cache, a storage quota too small for a shard, and a software WebGPU
adapter left unused. The tab is the slowest provider (WASM against native), so with two headless providers the
third hop of every job lands on it."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from inference.gguf_model import GGUFModel, smollm2_path
from inference.tokenizer import ChatTokenizer
from market.localstack import stream_tokens
from worker_web.testing.tab_driver import BrowserTab, launch, playwright_driver
from worker_web.testing.tab_parity import compare, descriptors, native_runtimes, record_chain, within_tolerance

pytestmark = pytest.mark.slow

PASSWORD = "tab-provider-password"
CAPITAL = "What is the capital of France?"
BENCHMARK_SHARD = "smollm2-135m:q4:10-20"  # market.selectors.benchmark_shard: the middle shard of the plan
STORY = "Write a long story about a dragon."


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with playwright_driver() as driver:
        yield driver


@pytest.fixture(scope="module")
def tab(market: Any, playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserTab]:
    market.manage("issue_token", "dave", "--create", "--password", PASSWORD)
    with launch(playwright, tmp_path_factory.mktemp("chromium-profile")) as context:
        page = BrowserTab(context, market.url, log=market.logs / "tab-console.log")
        page.sign_in("dave", PASSWORD)
        yield page


def tab_against_native(market: Any, tab: BrowserTab, shard_id: str, prompt: str, tokens: int) -> dict[str, Any]:
    """The shard the tab served, run in the tab and natively on the same inputs (those the native chain relays for
    this prompt): the largest differences of its outputs and per-layer hidden states."""
    model = GGUFModel(smollm2_path())
    shards = descriptors(market, market.alice, "q4", model.config)
    chain = native_runtimes(Path(market.env["MEDIA_ROOT"]), shards)
    ids = ChatTokenizer.from_gguf(model).encode_chat([{"role": "user", "content": prompt}])
    index = next(i for i, s in enumerate(shards) if s["id"] == shard_id)
    return compare(tab, shards[index], chain[index], record_chain(chain, ids, tokens)[index])


def start_providing(market: Any, tab: BrowserTab, headless: int) -> None:
    """`headless` headless providers and the tab, all online and benchmarked."""
    market.ensure_providers(headless)
    tab.start()
    market.wait(lambda: len(market.online_providers(market.carol)) == headless + 1, 120, "the tab to be online")


def server_downloads(market: Any, sha256: str) -> int:
    """Shard downloads the server answered with the file (200), from its access log."""
    return len(re.findall(rf'"GET /shards/{sha256}/" 200', market.log_text("server")))


def shard_sha(market: Any, shard_id: str) -> str:
    _, models = market.api("GET", "/api/models/", token=market.alice)
    return str(next(s["sha256"] for m in models for s in m["shards"] if s["id"] == shard_id))


def tab_hop(job: dict[str, Any]) -> dict[str, Any]:
    return next(h for h in job["pipeline"] if h["provider_name"] == "dave-browser")


def stream(market: Any, job_id: int) -> list[dict[str, Any]]:
    """The job's stream, read on a thread of its own: Playwright's sync API keeps an event loop on this one."""
    with ThreadPoolExecutor(1) as pool:
        return list(pool.submit(market.stream, job_id, market.alice).result())


def run_job(market: Any, prompt: str, max_new_tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = market.submit(market.alice, model="smollm2-135m", prompt=prompt, max_new_tokens=max_new_tokens)
    events = stream(market, job["id"])
    _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    return done, events


def test_browser_tab_serves_a_shard_and_the_output_equals_the_whole_model(
    market: Any, tab: BrowserTab, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    tab.watch_download_bar()
    start_providing(market, tab, headless=2)
    assert tab.text("device-backend") == "WASM (CPU)"  # no GPU here: the fallback adapter is never used
    assert tab.text("device-isolated") == "yes", "COOP/COEP: WASM threads need a cross-origin isolated page"
    done, events = run_job(market, CAPITAL, 32)
    assert done["state"] == "done", done
    bar = tab.download_bar_states()
    assert any(not hidden and 0 < value < 1 for hidden, value, _ in bar), "no progress was shown while downloading"
    assert any(label.startswith(f"Downloading {tab_hop(done)['shard']}:") for _, _, label in bar)
    assert bar[-1][0] is True and bar[-1][1] == 1, "the bar stays up after the download"
    served = tab_hop(done)
    assert served["ended"] == "done"
    # How far the tab's WASM arithmetic is from native ONNX Runtime on this shard: inside the documented tolerance,
    # and shown when a token differs.
    parity = tab_against_native(market, tab, served["shard"], CAPITAL, len(done["tokens"]))
    assert done["tokens"] == list(stream_tokens(events)) == whole_model_tokens(CAPITAL, 32), parity
    assert done["text"] == "The capital of France is Paris."
    assert len({hop["provider"] for hop in done["pipeline"]}) == 3
    assert within_tolerance(parity, has_head=served["shard"].endswith("20-30")), parity
    # One step per token, and one more that sampled the stop token.
    assert tab.number("stat-steps") == len(done["tokens"]) + (done["finish_reason"] == "stop")
    assert served["shard"] in tab.text("stat-shards")
    # Every shard the tab used (the benchmark's and the one it served) came over the network exactly once.
    assert tab.number("stat-downloads") == len(set(tab.text("stat-shards").split(", ")))
    assert server_downloads(market, shard_sha(market, served["shard"])) >= 1


def test_after_a_reload_the_shards_come_from_the_cache(
    market: Any, tab: BrowserTab, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    held = set(tab.text("stat-shards").split(", "))  # all the tab holds: one session so far
    before = server_downloads_all(market) - headless_downloads(market)
    tab.reload()
    start_providing(market, tab, headless=2)
    done, events = run_job(market, CAPITAL, 32)
    assert done["state"] == "done" and done["tokens"] == whole_model_tokens(CAPITAL, 32)
    assert tab_hop(done)["ended"] == "done"
    # The benchmark's shard, and the served one when the market gives the tab a shard it held, come from the cache;
    # only a shard it never held (the market may place it on another hop: speeds changed) comes over the network.
    used = set(tab.text("stat-shards").split(", "))
    assert tab.number("stat-downloads") == len(used - held), "a shard was downloaded again after a reload"
    assert tab.number("stat-cache-hits") >= len(used & held) >= 1
    # The server's access log agrees; a headless provider given a shard it never held downloads it too, and says so.
    assert server_downloads_all(market) - headless_downloads(market) == before + len(used - held)


def test_a_corrupt_cached_shard_is_detected_by_its_hash_and_downloaded_again(
    market: Any, tab: BrowserTab, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    # The benchmark's shard: every start loads it, whichever shard the market then gives the tab.
    sha = shard_sha(market, BENCHMARK_SHARD)
    before = server_downloads(market, sha)
    tab.reload()
    tab.corrupt_cached_shard(sha)
    start_providing(market, tab, headless=2)
    done, _ = run_job(market, CAPITAL, 32)
    assert done["state"] == "done" and done["tokens"] == whole_model_tokens(CAPITAL, 32)
    assert tab.number("stat-corrupt") == 1
    assert tab.number("stat-downloads") >= 1
    assert server_downloads(market, sha) == before + 1


def test_closing_the_tab_mid_job_fails_over_to_a_headless_spare(
    market: Any, tab: BrowserTab, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    tab.reload()
    start_providing(market, tab, headless=2)
    job = market.submit(market.alice, model="smollm2-135m", prompt=STORY, max_new_tokens=160)
    tokens_seen = threading.Event()
    events: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "token":
            tokens_seen.set()

    def watch() -> None:
        events.extend(market.stream(job["id"], market.alice, on_event=on_event))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert tokens_seen.wait(120), "the job never produced a token"
    # The spare joins only now: had it been online at placement, the faster headless spare would have got the hop.
    market.ensure_providers(3)
    steps_before_close = tab.number("stat-steps")
    tab.close()
    watcher.join(300)
    _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    expected = whole_model_tokens(STORY, 160)
    assert done["state"] == "done", done
    assert list(stream_tokens(events)) == expected == done["tokens"]
    hops = [h for h in done["pipeline"] if h["hop"] == tab_hop(done)["hop"]]
    assert steps_before_close < len(expected), "the job had finished before the tab was closed"
    assert hops[0]["provider_name"] == "dave-browser" and hops[0]["ended"].startswith("provider_lost")
    assert hops[1]["provider_name"] != "dave-browser" and hops[1]["ended"] == "done"


def server_downloads_all(market: Any) -> int:
    return len(re.findall(r'"GET /shards/[0-9a-f]{64}/" 200', market.log_text("server")))


def headless_downloads(market: Any) -> int:
    """Shards the headless providers downloaded, from their own logs (the ones since stopped included)."""
    names = [n for n in market.processes if n.startswith("p")]
    return sum(len(re.findall(r"downloaded \S+ \(", market.log_text(n))) for n in names)


def test_the_page_benchmarks_on_request_and_clears_its_cache(market: Any, tab: BrowserTab) -> None:
    tab.reload()  # the previous test closed the tab: this opens it again, still signed in
    assert tab.text("cache-list") != "none"
    tab.page.click("#benchmark")
    tab.page.wait_for_function("document.getElementById('benchmark-result').textContent.includes('ms per layer-token')")
    assert "smollm2-135m:q4:10-20" in tab.text("benchmark-result")
    # Earnings are the ledger's: the jobs this tab served earlier in this module were settled to dave's account.
    earned = market.api("GET", "/api/provider/earnings/", token=market.manage("issue_token", "dave"))[1]
    total = earned["pending"] + earned["earnings"]
    assert total > 0, "the tab served settled jobs: dave has earned something"
    tab.page.wait_for_function(f"document.getElementById('stat-earned').dataset.total === '{total}'", timeout=15_000)
    assert tab.text("stat-earned").startswith(f"{total:,} base units")
    # This market runs without a chain: the page says no stake is needed (from /api/account/chain/).
    tab.page.wait_for_function("document.getElementById('stat-stake').textContent.includes('without a chain')")
    tab.page.click("#clear-cache")
    tab.page.wait_for_function("document.getElementById('cache-list').textContent === 'none'")
    tab.reload()
    assert tab.text("cache-list") == "none"
    tab.page.screenshot(path=str(market.logs / "provider-tab.png"), full_page=True)


def test_a_full_quota_is_explained_and_the_shard_still_serves_from_memory(
    market: Any, tab: BrowserTab, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    tab.reload()
    assert tab.text("cache-list") == "none"  # the previous test cleared it
    # DevTools shrinks this origin's storage quota to 1 MB: no shard fits, as on a full disk.
    cdp = tab.context.new_cdp_session(tab.page)
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": market.url, "quotaSize": 1_000_000})
    start_providing(market, tab, headless=2)
    done, _ = run_job(market, CAPITAL, 32)
    assert done["state"] == "done" and done["tokens"] == whole_model_tokens(CAPITAL, 32)
    assert tab_hop(done)["ended"] == "done"
    message = tab.text("message")
    assert message.startswith("Not enough storage to keep smollm2-135m:q4:") and "clear the cache" in message
    assert tab.text("cache-list") == "none"
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": market.url})


def test_the_tabs_work_audited_is_verified_and_the_tab_never_slashed(market: Any, tab: BrowserTab) -> None:
    """The referee (native ONNX Runtime) re-runs the hops, the tab's WASM one included: honest work is no fraud.
    (After the tests that count downloads: its jobs teach the market the providers' speeds, which moves
    later placements.)"""
    tab.reload()
    start_providing(market, tab, headless=2)
    owner = market.manage("issue_token", "dave")
    for _ in range(2):
        done, _ = run_job(market, CAPITAL, 12)
        assert done["state"] == "done" and tab_hop(done), done
        out = market.manage("audit", str(done["id"]), "--wait")
        assert "verdict: no_fraud" in out, out
    _, body = market.api("GET", "/api/provider/audits/", token=owner)
    rows = [p for p in body["providers"] if p["name"] == "dave-browser"]  # one per connection it made
    assert not any(r["barred"] or r["audits_failed"] for r in rows), rows
    assert sum(r["audits_passed"] for r in rows) >= 2, rows

    # The tab shows them, from the same API.
    def shown() -> bool:
        found = re.match(r"(\d+) passed, 0 failed", tab.text("stat-audits"))
        return found is not None and int(found.group(1)) >= 2

    market.wait(shown, 30, "the tab to show its audits")


def test_a_software_webgpu_adapter_is_not_used(market: Any, playwright: Any, tmp_path: Any) -> None:
    """--enable-unsafe-webgpu without a GPU offers SwiftShader, a fallback adapter hundreds of times slower than
    WASM: the tab names it and runs on WASM."""
    market.manage("issue_token", "dave", "--create", "--password", PASSWORD)
    with launch(playwright, tmp_path / "profile", extra_flags=("--enable-unsafe-webgpu",)) as context:
        other = BrowserTab(context, market.url, log=market.logs / "webgpu-tab-console.log")
        other.sign_in("dave", PASSWORD)
        assert "fallback adapter: not used" in other.text("device-adapter")
        assert other.text("device-backend") == "WASM (CPU)"
