"""Drives the marketplace's pages (dashboard, buyer console, job page, account, provider console) in headless
Chromium through Playwright, for tests/e2e/test_marketplace.py and `make screens`.

Chromium is Debian's, launched as tab_driver launches it (no browser download). Each `Site` is one visitor: a
browser context with its own cookies. Every page it opens reports its console errors and uncaught exceptions to one
`ConsoleErrors`, and can be photographed at desktop and phone width into a folder (`SCREENS`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_web.testing.tab_driver import CHROMIUM, FLAGS

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
NARROWEST = 375  # the width every page must fit without a horizontal scroll (common ground of issue 17)
# Pages set data-ready ("1"; the provider tab "true") once they show their first data and their live socket is open.
READY = "body[data-ready]"
LOAD_MS = 60_000  # a page's first data on a loaded 2-core machine running the whole stack
SEPARATORS = re.compile(r"[,\s\u00a0\u202f']")


@contextlib.contextmanager
def launch_browser(playwright: Any) -> Iterator[Any]:
    """One headless Chromium (no profile on disk): each Site opens a context of its own in it."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class ConsoleErrors:
    """Console messages of type error and uncaught exceptions of every page watched, as "url: text". A test that
    causes an error on purpose (a 402 or 404 response is logged by Chromium) allows it with `allow(pattern)`."""

    seen: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.seen.append(f"{page.url}: uncaught {error}"))

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def reset(self) -> None:
        self.seen.clear()
        self.allowed.clear()

    def _console(self, page: Any, message: Any) -> None:
        if message.type != "error" or any(p.search(message.text) for p in self.allowed):
            return
        source = message.location.get("url") or page.url
        self.seen.append(f"{source}: {message.text}")


class Site:
    """One visitor on the market at `base_url`: open pages, sign up or in, read numbers, take screenshots."""

    def __init__(self, browser: Any, base_url: str, errors: ConsoleErrors, *, screens: Path | None = None) -> None:
        self.base_url = base_url
        self.errors = errors
        self.screens = screens
        self.context = browser.new_context(viewport=DESKTOP, base_url=base_url)

    def close(self) -> None:
        self.context.close()

    def page(self, *, viewport: dict[str, int] = DESKTOP) -> Any:
        """A blank page of this visitor, watched for errors; confirm() dialogs (revoke, cancel) are accepted."""
        page = self.context.new_page()
        page.set_viewport_size(viewport)
        self.errors.watch(page)
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    def open(self, path: str, *, viewport: dict[str, int] = DESKTOP, ready: bool = True) -> Any:
        page = self.page(viewport=viewport)
        page.goto(path)
        if ready:
            wait_ready(page)
        return page

    def sign_up(self, username: str, password: str, *, shoot: bool = True) -> Any:
        """Signs up on /signup/ (`shoot`: screenshots of the empty form first); returns the page it lands on."""
        page = self.open("/signup/", ready=False)
        if shoot:
            self.shoot(page, "signup", ready=False)
        page.fill("#id_username", username)
        page.fill("#id_password1", password)
        page.fill("#id_password2", password)
        page.click("#sign-up")
        page.wait_for_url(re.compile(r"/account/$"))
        return page

    def sign_in(self, username: str, password: str, then: str = "/account/") -> Any:
        page = self.open(f"/signin/?next={then}", ready=False)
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("#sign-in")
        page.wait_for_url(re.compile(re.escape(then) + "$"))
        return page

    def shoot(self, page: Any, name: str, *, ready: bool = True, prepare: Callable[[Any], None] | None = None) -> None:
        """`<name>-desktop.png` of the page as it is and `<name>-phone.png` of the same address opened at phone
        width (full pages; `prepare` brings the phone's page to the desktop's state, e.g. a form filled in), when a
        screens folder is set; and whatever the folder, the page must fit the narrowest phone without a horizontal
        scroll."""
        phone = self.open(page.url, viewport=PHONE, ready=ready)
        try:
            if prepare is not None:
                prepare(phone)
            if self.screens is not None:
                self.screens.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(self.screens / f"{name}-desktop.png"), full_page=True)
                phone.screenshot(path=str(self.screens / f"{name}-phone.png"), full_page=True)
            phone.set_viewport_size({"width": NARROWEST, "height": PHONE["height"]})
            overflow = phone.evaluate("() => document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"{page.url} scrolls sideways by {overflow} px at {NARROWEST} px wide"
        finally:
            phone.close()


def wait_ready(page: Any, timeout: float = LOAD_MS) -> None:
    page.wait_for_selector(READY, state="attached", timeout=timeout)


def number(page: Any, selector: str) -> int:
    """The integer an element shows: its data-value when it has one, else its text with thousands separators
    removed (anything else in the text is a mismatch with the pages' contract, and raises)."""
    element = page.locator(selector)
    value = element.get_attribute("data-value")
    text = (value if value is not None else element.text_content() or "").strip()
    plain = SEPARATORS.sub("", text)
    if not re.fullmatch(r"-?\d+", plain):
        raise ValueError(f"{selector} shows {text!r}, not an integer of base units")
    return int(plain)


def integers(text: str) -> set[int]:
    """Every integer written in a text, thousands separators allowed (for tables and sentences)."""
    return {int(SEPARATORS.sub("", m)) for m in re.findall(r"\d[\d,\u00a0\u202f]*\d|\d", text)}
