"""`/api/users` (DESIGN §8): admins list, create, disable, enable and delete users.

The rules answer in-process (tests/api/inprocess.py); what deleting a user leaves on
storage is checked on a real `chute serve` with local disk, by walking its data dir.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chute.auth.service import add_user, issue_token
from chute.db.models import ApiToken, TokenKind
from tests.api.inprocess import App, TestClient, app_in_process

PASSWORD = "pw-for-tests"
ORIGIN = {"Origin": "http://testserver"}
ADMIN_ONLY = {"detail": "Only an admin may do this."}
NOT_FOUND = {"detail": "User not found."}
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from app_in_process(Path(tmp_path_factory.mktemp("users-api")))


def new_name(prefix: str = "u") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def signed_in(app: App, *, admin: bool = False, name: str | None = None) -> TestClient:
    """A client with a bearer token of a new user (an admin if asked)."""
    with app.runtime.sessions() as session:
        user = add_user(
            session, name or new_name("admin" if admin else "user"), PASSWORD, admin=admin
        )
        token = issue_token(session, user, TokenKind.BEARER, 3600)
    client = TestClient(app.http.app, base_url="http://testserver")
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def me(client: TestClient) -> dict[str, Any]:
    answer = client.get("/api/auth/me")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def listed(admin: TestClient) -> dict[str, dict[str, Any]]:
    answer = admin.get("/api/users")
    assert answer.status_code == 200, answer.text
    return {user["username"]: user for user in answer.json()}


def routes(user_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", "/api/users", None),
        ("POST", "/api/users", {"username": new_name(), "password": PASSWORD}),
        ("POST", "/api/users", {"username": "\x00" * 500}),  # the body is never read
        ("PATCH", f"/api/users/{user_id}", {"is_admin": True}),
        ("POST", f"/api/users/{user_id}/disable", None),
        ("POST", f"/api/users/{user_id}/enable", None),
        ("DELETE", f"/api/users/{user_id}", None),
        ("DELETE", "/api/users/999999", None),
    ]


def test_only_admins_may_use_any_users_route(app: App) -> None:
    admin = signed_in(app, admin=True)
    plain = signed_in(app)
    target = me(signed_in(app))
    anonymous = TestClient(app.http.app, base_url="http://testserver")
    before = listed(admin)
    for method, path, body in routes(target["id"]):
        answer = plain.request(method, path, json=body)
        assert (answer.status_code, answer.json()) == (403, ADMIN_ONLY), (method, path)
        answer = anonymous.request(method, path, json=body)
        assert (answer.status_code, answer.json()) == (401, {"detail": "Not signed in."})
    # A non-admin cannot make themselves one either.
    answer = plain.patch(f"/api/users/{me(plain)['id']}", json={"is_admin": True})
    assert answer.status_code == 403
    assert listed(admin) == before
    assert me(plain)["is_admin"] is False


def test_an_admin_creates_users_and_admins(app: App) -> None:
    admin = signed_in(app, admin=True)
    name = new_name("dora")
    answer = admin.post("/api/users", json={"username": f"  {name} ", "password": "s3cret pw"})
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert {k: made[k] for k in ("username", "is_admin", "disabled")} == {
        "username": name,
        "is_admin": False,
        "disabled": False,
    }
    assert set(made) == {"id", "username", "is_admin", "disabled", "created_at"}
    assert listed(admin)[name]["id"] == made["id"]
    token = app.http.post("/api/auth/token", data={"username": name, "password": "s3cret pw"})
    assert token.status_code == 200, token.text

    boss = new_name("boss")
    answer = admin.post("/api/users", json={"username": boss, "password": "pw", "is_admin": True})
    assert answer.status_code == 201 and answer.json()["is_admin"] is True
    signed = app.http.post("/api/auth/token", data={"username": boss, "password": "pw"})
    new_admin = TestClient(app.http.app, base_url="http://testserver")
    new_admin.headers["Authorization"] = f"Bearer {signed.json()['access_token']}"
    assert me(new_admin)["is_admin"] is True
    assert name in listed(new_admin)

    again = admin.post("/api/users", json={"username": name, "password": "other"})
    assert again.status_code == 409
    assert again.json() == {"detail": "A user with that name already exists."}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"username": "bad\x00name", "password": "pw"}, "username: a user name is 1 to 100 "),
        ({"username": "esc\x1b[2Jape", "password": "pw"}, "printable characters"),
        ({"username": "two\nlines", "password": "pw"}, "printable characters"),
        ({"username": "rtl\u202eevil", "password": "pw"}, "printable characters"),
        ({"username": "   ", "password": "pw"}, "printable characters"),
        ({"username": "", "password": "pw"}, "username: String should have at least 1"),
        ({"username": "n" * 101, "password": "pw"}, "username: String should have at most 100"),
        ({"username": "n" * 60_000, "password": "pw"}, "username: String should have at most"),
        ({"username": "ok", "password": ""}, "password: String should have at least 1"),
        ({"username": "ok", "password": "p" * 1001}, "password: String should have at most"),
        ({"username": "ok"}, "password: Field required"),
        ({"username": 7, "password": "pw"}, "username: Input should be a valid string"),
        ({"username": "ok", "password": "pw", "is_admin": "yes"}, "is_admin: Input should be"),
        ({"username": "ok", "password": "pw", "role": "admin"}, "role: Extra inputs"),
    ],
)
def test_bad_users_are_refused_plainly(app: App, body: dict[str, Any], words: str) -> None:
    admin = signed_in(app, admin=True)
    before = listed(admin)
    answer = admin.post("/api/users", json=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert "\x00" not in detail and "\x1b" not in detail
    assert listed(admin) == before


def test_a_disabled_user_is_refused_at_once_and_enabled_again(app: App) -> None:
    admin = signed_in(app, admin=True)
    name = new_name("bob")
    bob = signed_in(app, name=name)
    bob_id = me(bob)["id"]
    browser = TestClient(app.http.app, base_url="http://testserver")
    login = browser.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    assert login.status_code == 200
    assert browser.get("/api/auth/me").status_code == 200

    answer = admin.post(f"/api/users/{bob_id}/disable")
    assert answer.status_code == 200, answer.text
    assert answer.json()["disabled"] is True and listed(admin)[name]["disabled"] is True
    # The very next request of each: the bearer token and the session cookie are dead.
    for client in (bob, browser):
        answer = client.get("/api/job")
        assert (answer.status_code, answer.json()) == (401, {"detail": "Not signed in."})
    answer = browser.post("/api/job", json={"name": "x"}, headers=ORIGIN)
    assert answer.status_code == 401
    # The right password says it is disabled; a wrong one says only that it is wrong.
    refused = app.http.post("/api/auth/token", data={"username": name, "password": PASSWORD})
    assert refused.status_code == 403
    assert refused.json() == {"detail": "This user is disabled; ask an admin to enable it."}
    wrong = app.http.post("/api/auth/token", data={"username": name, "password": "nope"})
    assert wrong.status_code == 401
    login = browser.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    assert login.status_code == 403
    # Disabling again changes nothing and is no error.
    assert admin.post(f"/api/users/{bob_id}/disable").status_code == 200

    answer = admin.post(f"/api/users/{bob_id}/enable")
    assert answer.status_code == 200 and answer.json()["disabled"] is False
    # A new sign-in works; what was issued before the disabling stays dead.
    again = app.http.post("/api/auth/token", data={"username": name, "password": PASSWORD})
    assert again.status_code == 200
    assert bob.get("/api/auth/me").status_code == 401
    assert browser.get("/api/auth/me").status_code == 401


def test_api_tokens_follow_their_user(app: App) -> None:
    """An API token is kept while its user is disabled, refused until enabled, and
    deleted with its user."""
    admin = signed_in(app, admin=True)
    owner = signed_in(app)
    owner_id = me(owner)["id"]
    made = owner.post("/api/tokens", json={"name": "pipeline"})
    assert made.status_code == 201, made.text
    pipeline = TestClient(app.http.app, base_url="http://testserver")
    pipeline.headers["Authorization"] = f"Bearer {made.json()['secret']}"
    assert pipeline.get("/api/job").status_code == 200
    assert admin.post(f"/api/users/{owner_id}/disable").status_code == 200
    assert pipeline.get("/api/job").status_code == 401
    assert admin.post(f"/api/users/{owner_id}/enable").status_code == 200
    assert pipeline.get("/api/job").status_code == 200
    assert admin.delete(f"/api/users/{owner_id}").status_code == 204
    assert pipeline.get("/api/job").status_code == 401
    with app.runtime.sessions() as session:
        left = session.scalars(select(ApiToken).where(ApiToken.user_id == owner_id)).all()
    assert left == []


@pytest.mark.parametrize("user_id", ["999999", "0", "-5", str(2**31), str(2**63), str(10**30)])
def test_unknown_user_ids_are_not_found(app: App, user_id: str) -> None:
    admin = signed_in(app, admin=True)
    for method, path in (
        ("PATCH", f"/api/users/{user_id}"),
        ("POST", f"/api/users/{user_id}/disable"),
        ("POST", f"/api/users/{user_id}/enable"),
        ("DELETE", f"/api/users/{user_id}"),
    ):
        answer = admin.request(method, path, json={"is_admin": True} if method == "PATCH" else None)
        assert (answer.status_code, answer.json()) == (404, NOT_FOUND), (method, path)


def test_a_user_id_that_is_no_number_is_refused_plainly(app: App) -> None:
    admin = signed_in(app, admin=True)
    answer = admin.post("/api/users/abc/disable")
    assert answer.status_code == 422
    assert "user_id" in answer.json()["detail"]


def test_an_admin_cannot_disable_or_delete_themselves(app: App) -> None:
    admin = signed_in(app, admin=True)
    other = signed_in(app, admin=True)
    own = me(admin)["id"]
    for method, path, action in (
        ("POST", f"/api/users/{own}/disable", "disable"),
        ("DELETE", f"/api/users/{own}", "delete"),
    ):
        answer = admin.request(method, path)
        assert answer.status_code == 409
        assert answer.json() == {
            "detail": f"An admin cannot {action} their own user; ask another admin."
        }
    assert me(admin)["id"] == own
    # Another admin may.
    assert other.post(f"/api/users/{own}/disable").status_code == 200
    assert admin.get("/api/users").status_code == 401
    assert other.post(f"/api/users/{own}/enable").status_code == 200


def test_an_admin_makes_another_and_cannot_unmake_themselves(app: App) -> None:
    admin = signed_in(app, admin=True)
    plain = signed_in(app)
    plain_id = me(plain)["id"]
    answer = admin.patch(f"/api/users/{plain_id}", json={"is_admin": True})
    assert answer.status_code == 200 and answer.json()["is_admin"] is True
    # At once: the next request of the new admin may manage users.
    assert plain.get("/api/users").status_code == 200
    own = me(admin)["id"]
    answer = admin.patch(f"/api/users/{own}", json={"is_admin": False})
    assert answer.status_code == 409
    assert answer.json() == {"detail": "An admin cannot demote their own user; ask another admin."}
    for body in ({}, {"is_admin": "no"}, {"is_admin": 0}, {"is_admin": False, "x": 1}):
        assert admin.patch(f"/api/users/{plain_id}", json=body).status_code == 422, body
    answer = admin.patch(f"/api/users/{plain_id}", json={"is_admin": False})
    assert answer.status_code == 200 and answer.json()["is_admin"] is False
    assert plain.get("/api/users").status_code == 403
    answer = admin.patch("/api/users/999999", json={"is_admin": True})
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)


def test_a_session_cookie_write_needs_this_site(app: App) -> None:
    name = new_name("admin")
    signed_in(app, admin=True, name=name)
    browser = TestClient(app.http.app, base_url="http://testserver")
    assert browser.post("/api/auth/login", json={"username": name, "password": PASSWORD}).is_success
    body = {"username": new_name(), "password": PASSWORD}
    foreign = browser.post("/api/users", json=body, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert browser.post("/api/users", json=body, headers=ORIGIN).status_code == 201


def test_deleting_a_user_ends_its_tokens_and_jobs(app: App) -> None:
    admin = signed_in(app, admin=True)
    doomed = signed_in(app)
    doomed_id = me(doomed)["id"]
    job = doomed.post("/api/job", json={"name": "mine"})
    assert job.status_code == 201
    answer = admin.delete(f"/api/users/{doomed_id}")
    assert answer.status_code == 204 and answer.content == b""
    assert doomed.get("/api/job").status_code == 401
    assert doomed_id not in {u["id"] for u in listed(admin).values()}
    assert admin.delete(f"/api/users/{doomed_id}").status_code == 404
    # The job went with it: its id answers as no job to anyone.
    assert admin.get(f"/api/job/{job.json()['id']}").status_code == 404
