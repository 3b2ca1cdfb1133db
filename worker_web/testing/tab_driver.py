"""Drives the provider tab in headless Chromium through Playwright, for the end-to-end tests and bench/browser.py.

Chromium is Debian's (`make venv` installs it); Playwright's Python package brings its own driver and launches that
executable, so no browser is downloaded. A persistent profile keeps the tab's IndexedDB shard cache across reloads,
as a person's browser does.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def playwright_driver() -> Iterator[Any]:
    """Playwright's driver; one per thread: every browser of a test module is launched from it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@contextlib.contextmanager
def launch(playwright: Any, profile: Path, *, extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A headless Chromium with its profile in `profile` (reuse the folder to keep the cache)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=[*FLAGS, *extra_flags]
    )
    try:
        yield context
    finally:
        context.close()


@contextlib.contextmanager
def chromium_context(profile: Path, *, extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A driver and one Chromium, for a script that needs just one browser (bench/browser.py)."""
    with playwright_driver() as playwright, launch(playwright, profile, extra_flags=extra_flags) as context:
        yield context


class BrowserTab:
    """One provider tab (/provide/): signs in, starts providing, reads the page's own panel."""

    def __init__(self, context: Any, base_url: str, *, log: Path | None = None) -> None:
        self.context = context
        self.base_url = base_url
        self.log = log
        self.page: Any = None

    def open(self) -> None:
        if self.page is None or self.page.is_closed():
            self.page = self.context.new_page()
            self.page.on("console", self._console)
        self.page.goto(self.base_url + "/provide/")

    def sign_in(self, username: str, password: str) -> None:
        self.open()
        if "/signin/" in self.page.url or "/provide/login/" in self.page.url:
            self.page.fill("#id_username", username)
            self.page.fill("#id_password", password)
            self.page.click("#sign-in")
        self.wait_ready()

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready=true]", timeout=60_000)

    def reload(self) -> None:
        if self.page is None or self.page.is_closed():
            self.open()
        else:
            self.page.reload()
        self.wait_ready()

    def close(self) -> None:
        self.page.close()

    def start(self) -> None:
        self.page.click("#start")
        self.page.wait_for_function(
            "document.getElementById('stat-connection').textContent.startsWith('connected')", timeout=60_000
        )

    def benchmark(self, shard: dict[str, Any] | None = None) -> int:
        """Runs the page's benchmark (on the server's benchmark shard unless given one); ns per layer-token."""
        result = self.page.evaluate("(shard) => window.providerTab.call('benchmark', {shard})", shard)
        return int(result["ns"])

    def load(self, shard: dict[str, Any]) -> dict[str, Any]:
        """Loads a shard in the tab's worker as a session would: {source, bytes, obtainMs, sessionMs, totalMs}."""
        return dict(self.page.evaluate("(shard) => window.providerTab.call('load', {shard})", shard))

    def watch_download_bar(self) -> None:
        """Records every change of the download progress bar (hidden?, value, label) from now on."""
        self.page.evaluate(
            """() => {
                const box = document.getElementById('download');
                window.downloadBarStates = [];
                new MutationObserver(() => window.downloadBarStates.push([
                    box.hidden, document.getElementById('download-progress').value,
                    document.getElementById('download-label').textContent,
                ])).observe(box, {attributes: true, subtree: true, childList: true, characterData: true});
            }"""
        )

    def download_bar_states(self) -> list[tuple[bool, float, str]]:
        return [tuple(state) for state in self.page.evaluate("() => window.downloadBarStates")]

    def text(self, element_id: str) -> str:
        return str(self.page.text_content(f"#{element_id}")).strip()

    def number(self, element_id: str) -> int:
        return int(self.text(element_id))

    def corrupt_cached_shard(self, sha256: str) -> None:
        """Flips one byte of the cached copy in IndexedDB, as a failing disk would."""
        found = self.page.evaluate(
            """async (sha) => {
                const db = await new Promise((ok, fail) => {
                    const r = indexedDB.open('compute-market-shards');
                    r.onsuccess = () => ok(r.result);
                    r.onerror = fail;
                });
                const store = () => db.transaction('files', 'readwrite').objectStore('files');
                const bytes = await new Promise((ok) => {
                    const r = store().get(sha);
                    r.onsuccess = () => ok(r.result);
                });
                if (!bytes) return false;
                const view = new Uint8Array(bytes);
                view[view.length >> 1] ^= 0xff;
                await new Promise((ok) => { const r = store().put(bytes, sha); r.onsuccess = ok; });
                db.close();
                return true;
            }""",
            sha256,
        )
        if not found:
            raise LookupError(f"shard {sha256} is not in the tab's cache")

    def evaluate(self, shard: dict[str, Any], steps: list[tuple[str, list[int], bytes]]) -> list[dict[str, Any]]:
        """Runs `shard` in the tab's worker on (dtype, dims, raw bytes) inputs, one step each, in a fresh session;
        returns per step {ms, dims, output, layer_hidden} with the outputs as raw float32 bytes."""
        payload = [{"dtype": d, "dims": dims, "data": base64.b64encode(raw).decode()} for d, dims, raw in steps]
        results = self.page.evaluate(
            """async ({shard, steps}) => {
                const decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)).buffer;
                const encode = (buffer) => {
                    const bytes = new Uint8Array(buffer); let text = '';
                    for (let i = 0; i < bytes.length; i += 0x8000) {
                        text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
                    }
                    return btoa(text);
                };
                const out = await window.providerTab.call('evaluate', {
                    shard, steps: steps.map((s) => ({dtype: s.dtype, dims: s.dims, data: decode(s.data)})),
                });
                return out.map((o) => ({
                    ms: o.ms, dims: o.dims, output: encode(o.output), layer_hidden: encode(o.layerHidden),
                }));
            }""",
            {"shard": shard, "steps": payload},
        )
        for result in results:
            result["output"] = base64.b64decode(result["output"])
            result["layer_hidden"] = base64.b64decode(result["layer_hidden"])
        return list(results)

    def _console(self, message: Any) -> None:
        if self.log is not None:
            with self.log.open("a") as out:
                out.write(f"{message.type}: {message.text}\n")
