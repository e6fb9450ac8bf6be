"""The admin's page in Chromium: the users listed, one added, one disabled and enabled
again; names shown as text; nothing of it for a user who is not an admin."""

from __future__ import annotations

import secrets

import httpx
from playwright.sync_api import Browser, Page, expect

from chute.auth.service import add_user
from chute.db.session import make_engine, make_sessionmaker
from tests.conftest import Server
from tests.e2e.conftest import PASSWORD, WIDTH_360, People

HTML = '<img src=x onerror="window.pwned=1">'


def new_user(server: Server, name: str, *, admin: bool = False) -> str:
    engine = make_engine(server.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            add_user(session, name, PASSWORD, admin=admin)
    finally:
        engine.dispose()
    return name


def signed_in_page(browser: Browser, server: Server, name: str) -> tuple[Page, list[str]]:
    """A tab of its own, signed in as `name`, and the errors its scripts raise."""
    page = browser.new_context(viewport=WIDTH_360).new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()
    return page, errors


def token(server: Server, name: str, password: str = PASSWORD) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post("/api/auth/token", data={"username": name, "password": password})


def test_an_admin_lists_adds_disables_and_enables_users(web: Server, browser: Browser) -> None:
    suffix = secrets.token_hex(3)
    boss = new_user(web, f"boss-{suffix}", admin=True)
    plain = new_user(web, f"plain-{suffix}")
    new_user(web, f"odd{HTML}{suffix}")
    page, errors = signed_in_page(browser, web, boss)
    try:
        link = page.get_by_role("link", name="Users")
        expect(link).to_be_visible()
        link.click()
        expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
        table = page.locator("#users-table")
        own = table.locator("tr", has_text=boss)
        expect(own).to_contain_text("admin")
        expect(own).to_contain_text("you")
        expect(own.get_by_role("button")).to_have_count(0)
        plain_row = table.locator("tr", has_text=plain)
        expect(plain_row).to_contain_text("user")
        expect(plain_row).to_contain_text("enabled")
        # A name holding HTML is shown as the text it is.
        expect(table.locator("tr", has_text=f"odd{HTML}{suffix}")).to_be_visible()
        assert page.locator("#users-table img").count() == 0
        assert page.evaluate("window.pwned") is None

        # Add a user, an admin.
        form = page.get_by_role("form", name="Add a user")
        added = f"added-{suffix}"
        form.get_by_label("User name").fill(added)
        form.get_by_label("Password").fill("added pw")
        form.get_by_label("Admin (may manage users)").check()
        form.get_by_role("button", name="Add user").click()
        expect(page.locator("#user-form-done")).to_have_text(f"Added {added}.")
        added_row = table.locator("tr", has_text=added)
        expect(added_row).to_contain_text("admin")
        signed = token(web, added, "added pw")
        assert signed.status_code == 200, signed.text
        # The same name again: the server's words, on the page.
        form.get_by_label("User name").fill(added)
        form.get_by_label("Password").fill("other pw")
        form.get_by_role("button", name="Add user").click()
        expect(page.locator("#user-form-error")).to_have_text(
            "A user with that name already exists."
        )

        # Disable the plain user: its token stops working at once; enable it again.
        bearer = token(web, plain).json()["access_token"]
        plain_row.get_by_role("button", name=f"Disable {plain}").click()
        expect(plain_row).to_contain_text("disabled")
        with httpx.Client(base_url=web.url, timeout=30) as http:
            me = http.get("/api/auth/me", headers={"Authorization": f"Bearer {bearer}"})
        assert me.status_code == 401
        assert token(web, plain).status_code == 403
        plain_row.get_by_role("button", name=f"Enable {plain}").click()
        expect(plain_row).to_contain_text("enabled")
        expect(plain_row.get_by_role("button", name=f"Disable {plain}")).to_be_visible()
        assert token(web, plain).status_code == 200
        assert not errors
    finally:
        page.context.close()


def test_a_user_who_is_not_an_admin_sees_no_admin_page(web: Server, people: People) -> None:
    alice = people(web)
    page = alice.page
    expect(page.locator("#who")).to_be_visible()
    expect(page.get_by_role("link", name="Users")).to_be_hidden()
    page.goto(f"{web.url}/#/admin")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    expect(page.locator("#view-admin")).to_be_hidden()
    assert page.locator("#users-table").count() == 0
    # The API says the same to whoever asks by hand.
    assert alice.api.http.get("/api/users").status_code == 403
