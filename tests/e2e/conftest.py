"""Browser fixtures: Debian's Chromium driven by Playwright, against a real `chute serve`.

Playwright cannot download browsers here, so it launches /usr/bin/chromium (the Debian
package; `.ci/run` installs it). Without it these tests fail: they are the only check
of the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, CDPSession, Page, Playwright, sync_playwright

from tests.conftest import Client, Server, serving
from tests.factories import csv_bytes

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "pw-for-tests"
SMALL_CHUNK = 64 * 1024
# Every test file is a few hundred KB in 64 KiB chunks: many chunks, little work.
CSV_ROWS = 20_000
WIDTH_360 = {"width": 360, "height": 800}


# Module-scoped, not session-scoped: while Playwright's sync API is open, its event loop
# counts as running in this thread, and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by a module's browser tests, with small chunks."""
    with serving(tmp_path_factory.mktemp("chute-web"), CHUTE_CHUNK_SIZE=str(SMALL_CHUNK)) as srv:
        yield srv


@dataclass
class Person:
    """A user with a browser tab, and an API client signed in as the same user."""

    page: Page
    server: Server
    api: Client

    @property
    def name(self) -> str:
        return self.api.username

    def sign_in(self) -> None:
        self.page.goto(self.server.url)
        self.page.get_by_label("User name").fill(self.name)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("heading", name="Jobs", exact=True).wait_for()

    def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.http.get("/api/job").json()["items"]
        return items

    def held(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.api.http.get(f"/api/job/{job_id}/upload-data").json()
        return result

    def current_job_id(self) -> int:
        match = re.search(r"#/job/(\d+)$", self.page.url)
        assert match, self.page.url
        return int(match.group(1))


class People:
    """Makes people: a user on `server`, a browser context of their own, signed in."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.pages: list[tuple[Page, list[str]]] = []

    def __call__(self, server: Server) -> Person:
        api = server.client(None, PASSWORD)
        page = self.browser.new_context(viewport=WIDTH_360).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        self.pages.append((page, errors))
        page.set_default_timeout(30_000)
        person = Person(page, server, api)
        person.sign_in()
        return person

    def close(self) -> None:
        for page, errors in self.pages:
            page.context.close()
            assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    made = People(browser)
    yield made
    made.close()


def throttle(page: Page, bytes_per_second: int) -> CDPSession:
    """Slow the tab's uploads down, so a test can act while chunks are in flight."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second,
        },
    )
    return cdp


def write_csv(tmp_path: Path, name: str = "sales.csv", rows: int = CSV_ROWS, seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows, seed))
    return path


def result_input(job: dict[str, Any]) -> dict[str, Any]:
    """What a job's result says of its input: `input` for a profile, else the result itself."""
    result: dict[str, Any] = job["result"]
    found: dict[str, Any] = result.get("input", result)
    return found
