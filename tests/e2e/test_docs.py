"""The API docs pages work in a real browser with nothing but Chute to load from: their
scripts run under their policy and render the API, and no request leaves the server."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.conftest import Server

# ReDoc's footer shows the Redocly logo from its CDN (no option turns it off); the policy
# blocks it and ReDoc then hides the image. Nothing else may even be tried.
BLOCKED_AS_EXPECTED = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


@pytest.mark.parametrize(("path", "shows"), [("/docs", "/api/auth/token"), ("/redoc", "Download")])
def test_the_docs_page_renders_offline(
    browser: Browser, web: Server, path: str, shows: str
) -> None:
    page = browser.new_page()
    loaded: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    page.on("requestfinished", lambda request: loaded.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{web.url}{path}")
        page.get_by_text(shows, exact=True).first.wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
    finally:
        page.close()
    assert f"{web.url}/openapi.json" in loaded
    outside = [u for u in loaded if not u.startswith((web.url, "blob:", "data:"))]
    assert outside == []
    assert set(failed) <= BLOCKED_AS_EXPECTED
    unexpected = [e for e in errors if not any(url in e for url in BLOCKED_AS_EXPECTED)]
    assert unexpected == []
