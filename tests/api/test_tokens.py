"""API tokens (DESIGN §8), in this process: what the routes take and refuse, and what a
token may do once made: sign requests in while it lives, stop at once when revoked,
expired or its user disabled, never be a browser's session, never make another token.
The CLI and the Python client against a real server are tests/client/test_tokens.py's."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from chute.api.deps import SESSION_COOKIE
from chute.auth.service import purge_expired
from chute.auth.throttle import SigninLimits
from chute.auth.tokens import KEEP_EXPIRED, LAST_USE_STEP, MAX_TOKENS, PREFIX
from chute.db.models import ApiToken, User, utcnow
from tests.api.inprocess import App, TestClient, app_in_process

REFUSED = "The API token was refused"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from app_in_process(Path(tmp_path_factory.mktemp("tokens-api")))


@pytest.fixture
def client(app: App) -> TestClient:
    return app.client()


def make(client: TestClient, name: str = "ci", **body: Any) -> dict[str, Any]:
    answer = client.post("/api/tokens", json={"name": name, **body})
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


def listed(client: TestClient) -> list[dict[str, Any]]:
    answer = client.get("/api/tokens")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def bearer(app: App, secret: str) -> TestClient:
    signed_in = TestClient(app.http.app, base_url="http://testserver")
    signed_in.headers["Authorization"] = f"Bearer {secret}"
    return signed_in


def row(app: App, token_id: int) -> ApiToken | None:
    with app.runtime.sessions() as session:
        return session.get(ApiToken, token_id)


def set_token(app: App, token_id: int, **values: Any) -> None:
    with app.runtime.sessions() as session:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(**values))
        session.commit()


def me(client: TestClient) -> dict[str, Any]:
    answer = client.get("/api/auth/me")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_the_secret_is_shown_once_and_kept_as_its_sha256(app: App, client: TestClient) -> None:
    made = make(client, "  nightly export  ")
    secret = made["secret"]
    assert secret.startswith(PREFIX) and len(secret) == len(PREFIX) + 43
    assert made["name"] == "nightly export"
    assert made["expires_at"] is None and made["last_used_at"] is None
    assert made["expired"] is False
    [item] = listed(client)
    assert "secret" not in item
    assert item == {k: v for k, v in made.items() if k != "secret"}
    stored = row(app, made["id"])
    assert stored is not None
    assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(vars(stored))
    assert make(client, "other")["secret"] != secret


def test_a_token_signs_requests_in_as_its_user(app: App, client: TestClient) -> None:
    user = me(client)
    secret = make(client)["secret"]
    script = bearer(app, secret)
    assert me(script) == user
    job = script.post("/api/job", json={"name": "from a pipeline"})
    assert job.status_code == 201, job.text
    assert [j["id"] for j in client.get("/api/job").json()["items"]] == [job.json()["id"]]


def test_last_use_is_written_at_most_once_a_step(app: App, client: TestClient) -> None:
    made = make(client)
    script = bearer(app, made["secret"])
    before = utcnow()
    me(script)
    [first] = listed(client)
    used = datetime.fromisoformat(first["last_used_at"])
    assert before <= used <= utcnow()
    me(script)
    me(script)
    assert listed(client)[0]["last_used_at"] == first["last_used_at"]
    # A use recorded longer ago than the step is written again.
    old = utcnow() - LAST_USE_STEP - timedelta(seconds=5)
    set_token(app, made["id"], last_used_at=old)
    me(script)
    again = datetime.fromisoformat(listed(client)[0]["last_used_at"])
    assert again > old + LAST_USE_STEP


def test_revoked_tokens_stop_at_once(app: App, client: TestClient) -> None:
    made = make(client)
    kept = make(client, "kept")
    script = bearer(app, made["secret"])
    me(script)
    assert client.delete(f"/api/tokens/{made['id']}").status_code == 204
    refused = script.get("/api/auth/me")
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith(REFUSED)
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert row(app, made["id"]) is None
    assert [t["id"] for t in listed(client)] == [kept["id"]]
    again = client.delete(f"/api/tokens/{made['id']}")
    assert again.status_code == 404
    assert again.json() == {"detail": "API token not found."}
    me(bearer(app, kept["secret"]))


def test_another_users_token_is_not_found_and_untouched(app: App, client: TestClient) -> None:
    theirs = make(client)
    mallory = app.client()
    assert listed(mallory) == []
    for token_id in (theirs["id"], theirs["id"] + 10_000, 2**63 - 1, 2**63, 2**70, 0, -1):
        answer = mallory.delete(f"/api/tokens/{token_id}")
        assert answer.status_code == 404, (token_id, answer.text)
        assert answer.json() == {"detail": "API token not found."}
    assert mallory.delete("/api/tokens/abc").status_code == 422
    assert [t["id"] for t in listed(client)] == [theirs["id"]]
    me(bearer(app, theirs["secret"]))


def test_an_expired_token_is_refused_and_listed_as_expired(app: App, client: TestClient) -> None:
    made = make(client, expires_in_days=1)
    expires = datetime.fromisoformat(made["expires_at"])
    assert abs(expires - (utcnow() + timedelta(days=1))) < timedelta(minutes=1)
    script = bearer(app, made["secret"])
    me(script)
    set_token(app, made["id"], expires_at=utcnow() - timedelta(seconds=1))
    refused = script.get("/api/job")
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith(REFUSED)
    [item] = listed(client)
    assert item["expired"] is True


def test_expires_at_is_taken_with_its_offset(client: TestClient) -> None:
    when = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    east = when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert east.endswith("+05:30")
    made = make(client, expires_at=east)
    assert datetime.fromisoformat(made["expires_at"]) == when


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": -3}, "expires_in_days"),
        ({"expires_in_days": 3651}, "expires_in_days"),
        ({"expires_in_days": 10**40}, "expires_in_days"),
        ({"expires_in_days": 1.5}, "expires_in_days"),
        ({"expires_in_days": "7"}, "expires_in_days"),
        ({"expires_in_days": True}, "expires_in_days"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "has passed"),
        ({"expires_at": "2999-01-01T00:00:00Z"}, "within 3650 days"),
        ({"expires_at": "2030-01-01T00:00:00"}, "UTC offset"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_in_days": 5, "expires_at": "2030-01-01T00:00:00Z"}, "not both"),
    ],
)
def test_a_bad_expiry_is_refused_clearly(
    client: TestClient, body: dict[str, Any], words: str
) -> None:
    answer = client.post("/api/tokens", json={"name": "ci", **body})
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["detail"]
    assert listed(client) == []


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * 101, "a\x00b", "a\nb", "a\x1b[2Jb", "\u202eevil", 123, None],
)
def test_a_bad_name_is_refused_clearly(client: TestClient, name: object) -> None:
    answer = client.post("/api/tokens", json={"name": name})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("name")
    assert client.post("/api/tokens", json={}).status_code == 422
    assert client.post("/api/tokens", json={"name": "ci", "scope": "all"}).status_code == 422
    assert listed(client) == []


def test_names_up_to_100_printable_characters_are_taken(client: TestClient) -> None:
    assert make(client, "é" * 100)["name"] == "é" * 100
    assert make(client, "CI — déploiement 🚀")["name"] == "CI — déploiement 🚀"
    # Names need not be unique: ids tell tokens apart.
    assert make(client, "ci")["id"] != make(client, "ci")["id"]


def test_a_disabled_users_tokens_stop_at_once(app: App, client: TestClient) -> None:
    made = make(client)
    script = bearer(app, made["secret"])
    user_id = me(script)["id"]
    for disabled_at in (utcnow(), None):
        with app.runtime.sessions() as session:
            session.execute(update(User).where(User.id == user_id).values(disabled_at=disabled_at))
            session.commit()
        answer = script.get("/api/job")
        assert answer.status_code == (401 if disabled_at else 200), answer.text
        if disabled_at:
            assert answer.json()["detail"].startswith(REFUSED)


def test_unknown_tokens_are_refused(app: App) -> None:
    forged = bearer(app, PREFIX + "A" * 43).get("/api/job")
    assert forged.status_code == 401
    assert forged.json()["detail"].startswith(REFUSED)
    assert bearer(app, PREFIX).get("/api/job").status_code == 401
    assert bearer(app, "not-a-token").get("/api/job").json() == {"detail": "Not signed in."}


def test_an_api_token_is_no_browser_session(app: App, client: TestClient) -> None:
    secret = make(client)["secret"]
    browser = TestClient(app.http.app, base_url="http://testserver")
    browser.cookies.set(SESSION_COOKIE, secret)
    answer = browser.get("/api/auth/me")
    assert answer.status_code == 401
    assert answer.json() == {"detail": "Not signed in."}


def test_a_token_cannot_make_tokens_but_lists_and_revokes(app: App, client: TestClient) -> None:
    made = make(client)
    script = bearer(app, made["secret"])
    refused = script.post("/api/tokens", json={"name": "successor"})
    assert refused.status_code == 403
    assert "cannot make API tokens" in refused.json()["detail"]
    assert [t["id"] for t in listed(script)] == [made["id"]]
    # A pipeline may end its own token when done.
    assert script.delete(f"/api/tokens/{made['id']}").status_code == 204
    assert script.get("/api/tokens").status_code == 401


def test_signing_out_with_a_token_revokes_it(app: App, client: TestClient) -> None:
    made = make(client)
    script = bearer(app, made["secret"])
    assert script.post("/api/auth/logout").status_code == 204
    assert script.get("/api/auth/me").status_code == 401
    assert listed(client) == []


def test_a_user_holds_a_bounded_number_of_live_tokens(app: App, client: TestClient) -> None:
    user_id = me(client)["id"]
    with app.runtime.sessions() as session:
        session.add_all(
            ApiToken(user_id=user_id, name=f"t{i}", token_hash=f"{user_id:032x}{i:032x}")
            for i in range(MAX_TOKENS)
        )
        session.commit()
        some = session.scalars(select(ApiToken.id).where(ApiToken.user_id == user_id)).first()
    full = client.post("/api/tokens", json={"name": "one more"})
    assert full.status_code == 409
    assert f"You have {MAX_TOKENS} API tokens" in full.json()["detail"]
    assert some is not None
    set_token(app, some, expires_at=utcnow() - timedelta(days=1))  # expired tokens don't count
    make(client, "one more")
    assert len(listed(client)) == MAX_TOKENS + 1


def test_the_sweeper_deletes_tokens_long_expired(app: App, client: TestClient) -> None:
    old, recent, live = make(client, "old"), make(client, "recent"), make(client, "live")
    now = utcnow()
    set_token(app, old["id"], expires_at=now - KEEP_EXPIRED - timedelta(minutes=1))
    set_token(app, recent["id"], expires_at=now - KEEP_EXPIRED + timedelta(minutes=1))
    with app.runtime.sessions() as session:
        purge_expired(session, SigninLimits.of(app.settings), now)
    assert [(t["id"], t["expired"]) for t in listed(client)] == [
        (recent["id"], True),
        (live["id"], False),
    ]
