"""The page's API tokens view, in Chromium against a real server: make a token (its secret
shown once, copied to the clipboard), see its last use, revoke it; errors in plain words."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Dialog, expect

from chute.auth.tokens import PREFIX
from tests.conftest import Server
from tests.e2e.conftest import People

SECRET = re.compile(f"^{PREFIX}[A-Za-z0-9_-]{{43}}$")


def test_make_use_and_revoke_a_token_on_the_page(web: Server, people: People) -> None:
    alice = people(web)
    page = alice.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", name="API tokens", exact=True)).to_be_focused()
    expect(page.get_by_text("No API tokens yet.")).to_be_visible()

    # The server's words for a bad name, shown as they are.
    page.get_by_label("Token name").fill("   ")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-error")).to_contain_text("1 to 100 printable characters")

    page.get_by_label("Token name").fill("nightly export")
    page.get_by_label("Expires after").fill("30")
    page.get_by_role("button", name="Create token").click()
    made = page.get_by_role("region", name="New token")
    expect(made).to_contain_text("it will not be shown again")
    secret_box = page.get_by_label("Secret")
    expect(secret_box).to_have_value(SECRET)
    secret = secret_box.input_value()
    expect(page.locator("#token-error")).to_be_empty()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    row = page.locator("#tokens-table tbody tr", has_text="nightly export")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(3)).to_have_text("never")
    expect(row.locator("td").nth(2)).not_to_have_text("never")
    [listed] = alice.api.http.get("/api/tokens").json()["items"]
    assert listed["name"] == "nightly export" and listed["expires_at"] is not None

    # A script uses it; the page shows its last use, and the secret no more.
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {secret}"}) as script:
        assert script.get("/api/job").status_code == 200
        page.get_by_role("link", name="← All jobs").first.click()
        page.get_by_role("heading", name="Jobs", exact=True).wait_for()
        page.get_by_role("link", name="API tokens").click()
        expect(row.locator("td").nth(3)).not_to_have_text("never")
        expect(made).to_be_hidden()
        assert secret_box.input_value() == ""
        assert secret not in page.evaluate("document.body.innerText")

        # Revoking asks first: dismissed, the token stays; accepted, it stops at once.
        page.once("dialog", lambda dialog: dialog.dismiss())
        row.get_by_role("button", name="Revoke nightly export").click()
        expect(row).to_have_count(1)
        assert script.get("/api/job").status_code == 200
        messages: list[str] = []

        def accept(dialog: Dialog) -> None:
            messages.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        row.get_by_role("button", name="Revoke nightly export").click()
        expect(row).to_have_count(0)
        expect(page.get_by_text("No API tokens yet.")).to_be_visible()
        assert "nightly export" in messages[0]
        refused = script.get("/api/job")
        assert refused.status_code == 401
        assert refused.json()["detail"].startswith("The API token was refused")
