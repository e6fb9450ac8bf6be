"""Sign-in by token and by cookie, sessions that end on the server, same-origin writes."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from tests.conftest import Server

# Unusual enough that finding it anywhere in the database files means it was stored.
PASSWORD = "plaintext-canary-7f3a9c"
SET_COOKIE_NAME = "chute_session"


@pytest.fixture(scope="module")
def account(server: Server) -> str:
    """One user for the module (creating one costs an argon2 hash)."""
    return server.add_user("auth-tests", password=PASSWORD)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An anonymous client: no token, no cookie jar shared with other tests."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def get_token(http: httpx.Client, username: str, password: str) -> httpx.Response:
    return http.post("/api/auth/token", data={"username": username, "password": password})


def login(http: httpx.Client, username: str, password: str) -> str:
    """Sign in for a session; return the cookie's value (the jar is left empty)."""
    answer = http.post("/api/auth/login", json={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    value = answer.cookies.get(SET_COOKIE_NAME)
    assert value
    http.cookies.clear()
    return value


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{SET_COOKIE_NAME}={value}"}


def test_token_signs_in_as_bearer(server: Server, http: httpx.Client, account: str) -> None:
    name = account
    answer = get_token(http, name, PASSWORD)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 24 * 3600
    me = http.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == name


def test_each_token_is_new(server: Server, http: httpx.Client, account: str) -> None:
    name = account
    first = get_token(http, name, PASSWORD).json()["access_token"]
    second = get_token(http, name, PASSWORD).json()["access_token"]
    assert first != second


def test_wrong_password_and_unknown_user_answer_the_same_401(
    server: Server, http: httpx.Client, account: str
) -> None:
    name = account
    wrong_password = get_token(http, name, PASSWORD + "x")
    unknown_user = get_token(http, name + "-nobody", PASSWORD)
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json()["detail"] == unknown_user.json()["detail"]
    assert isinstance(wrong_password.json()["detail"], str)

    bad_login = http.post("/api/auth/login", json={"username": name, "password": "nope"})
    unknown_login = http.post("/api/auth/login", json={"username": "nobody", "password": "x"})
    assert bad_login.status_code == unknown_login.status_code == 401
    assert bad_login.json()["detail"] == unknown_login.json()["detail"]
    assert SET_COOKIE_NAME not in bad_login.cookies


def test_bad_or_missing_bearer_token_is_401(http: httpx.Client) -> None:
    assert http.get("/api/auth/me").status_code == 401
    answer = http.get("/api/auth/me", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401
    assert isinstance(answer.json()["detail"], str)


def test_login_sets_a_strict_httponly_cookie_that_signs_in(
    server: Server, http: httpx.Client, account: str
) -> None:
    name = account
    answer = http.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == name
    header = answer.headers["set-cookie"]
    attributes = [part.strip().lower() for part in header.split(";")]
    assert attributes[0].startswith(f"{SET_COOKIE_NAME}=")
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/" in attributes
    # The jar sends it back like a browser would.
    me = http.get("/api/auth/me")
    assert me.status_code == 200, me.text
    assert me.json()["username"] == name


def test_a_session_and_a_bearer_token_are_not_interchangeable(
    server: Server, http: httpx.Client, account: str
) -> None:
    name = account
    session = login(http, name, PASSWORD)
    token = get_token(http, name, PASSWORD).json()["access_token"]
    assert (
        http.get("/api/auth/me", headers={"Authorization": f"Bearer {session}"}).status_code == 401
    )
    assert http.get("/api/auth/me", headers=cookie(token)).status_code == 401


def test_logout_ends_the_session_on_the_server(
    server: Server, http: httpx.Client, account: str
) -> None:
    name = account
    stolen = login(http, name, PASSWORD)
    other = login(http, name, PASSWORD)
    assert http.get("/api/auth/me", headers=cookie(stolen)).status_code == 200

    answer = http.post("/api/auth/logout", headers={**cookie(stolen), "Origin": server.url})
    assert answer.status_code == 204, answer.text
    # The browser is told to forget the cookie ...
    assert SET_COOKIE_NAME in answer.headers.get("set-cookie", "")
    # ... and a copy of it, replayed by hand, no longer works.
    replay = http.get("/api/auth/me", headers=cookie(stolen))
    assert replay.status_code == 401
    write = http.post(
        "/api/job", json={"name": "x"}, headers={**cookie(stolen), "Origin": server.url}
    )
    assert write.status_code == 401
    # Only that session ended.
    assert http.get("/api/auth/me", headers=cookie(other)).status_code == 200


def test_logout_needs_the_same_origin(server: Server, http: httpx.Client, account: str) -> None:
    name = account
    session = login(http, name, PASSWORD)
    answer = http.post(
        "/api/auth/logout", headers={**cookie(session), "Origin": "https://evil.example"}
    )
    assert answer.status_code == 403
    assert http.get("/api/auth/me", headers=cookie(session)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="neither-origin-nor-referer"),
        pytest.param({"Origin": "https://evil.example"}, id="foreign-origin"),
        pytest.param({"Origin": "null"}, id="null-origin"),
        pytest.param({"Referer": "https://evil.example/page"}, id="foreign-referer"),
        # Origin wins over Referer: a foreign page cannot borrow our Referer.
        pytest.param(
            {"Origin": "https://evil.example", "Referer": "SELF/"}, id="foreign-origin-own-referer"
        ),
        # Same host, another port, is another origin.
        pytest.param({"Origin": "http://127.0.0.1:1"}, id="other-port"),
        pytest.param({"Origin": "https://SELFHOST"}, id="other-scheme"),
    ],
)
def test_cookie_write_from_another_origin_is_refused(
    server: Server, http: httpx.Client, account: str, headers: dict[str, str]
) -> None:
    name = account
    session = login(http, name, PASSWORD)
    host = server.url.removeprefix("http://")
    headers = {
        k: v.replace("SELFHOST", host).replace("SELF", server.url) for k, v in headers.items()
    }
    job_name = f"csrf {sorted(headers.items())}"
    answer = http.post("/api/job", json={"name": job_name}, headers={**cookie(session), **headers})
    assert answer.status_code == 403, answer.text
    assert isinstance(answer.json()["detail"], str)
    jobs = http.get("/api/job", params={"limit": 200}, headers=cookie(session)).json()
    assert job_name not in [job["name"] for job in jobs["items"]]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": "SELF"}, id="origin"),
        pytest.param({"Referer": "SELF/some/page?q=1"}, id="referer"),
        pytest.param({"Origin": "null", "Referer": "SELF/"}, id="null-origin-and-referer"),
    ],
)
def test_cookie_write_from_the_same_origin_is_accepted(
    server: Server, http: httpx.Client, account: str, headers: dict[str, str]
) -> None:
    name = account
    session = login(http, name, PASSWORD)
    headers = {k: v.replace("SELF", server.url) for k, v in headers.items()}
    answer = http.post("/api/job", json={"name": "mine"}, headers={**cookie(session), **headers})
    assert answer.status_code == 201, answer.text


def test_cookie_reads_need_no_origin(server: Server, http: httpx.Client, account: str) -> None:
    name = account
    session = login(http, name, PASSWORD)
    assert http.get("/api/job", headers=cookie(session)).status_code == 200


def test_bearer_write_needs_no_origin(server: Server, http: httpx.Client, account: str) -> None:
    name = account
    token = get_token(http, name, PASSWORD).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert "origin" not in http.build_request("POST", "/api/job").headers
    assert http.post("/api/job", json={"name": "script"}, headers=bearer).status_code == 201
    # A script's foreign Origin does not matter either: no cookie, no ambient authority.
    foreign = {**bearer, "Origin": "https://elsewhere.example"}
    assert http.post("/api/job", json={"name": "script"}, headers=foreign).status_code == 201


def test_database_holds_no_plaintext_password_or_token(
    server: Server, http: httpx.Client, account: str
) -> None:
    name, password = account, PASSWORD
    token = get_token(http, name, password).json()["access_token"]
    session = login(http, name, password)

    db = server.data_dir / "chute.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = ?", (name,)).fetchone()
        assert row is not None
        assert row[0].startswith("$argon2")
        hashes = [r[0] for r in conn.execute("SELECT token_hash FROM auth_tokens")]
        dump = "\n".join(conn.iterdump())
    assert len(hashes) >= 2
    assert name in dump  # the dump does hold this user's rows
    for secret in (password, token, session):
        assert secret not in dump
        assert secret not in hashes
    # Nor in the files themselves, write-ahead log included.
    for path in server.data_dir.glob("chute.db*"):
        raw = path.read_bytes()
        for secret in (password, token, session):
            assert secret.encode() not in raw, path.name


def test_an_expired_token_or_session_no_longer_signs_in(
    server: Server, http: httpx.Client, account: str
) -> None:
    token = get_token(http, account, PASSWORD).json()["access_token"]
    session = login(http, account, PASSWORD)
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/auth/me", headers=bearer).status_code == 200
    assert http.get("/api/auth/me", headers=cookie(session)).status_code == 200
    # Age both in the database, as time would.
    with closing(sqlite3.connect(server.data_dir / "chute.db", timeout=30)) as conn, conn:
        for secret in (token, session):
            digest = hashlib.sha256(secret.encode()).hexdigest()
            changed = conn.execute(
                "UPDATE auth_tokens SET expires_at = '2000-01-01 00:00:00.000000'"
                " WHERE token_hash = ?",
                (digest,),
            ).rowcount
            assert changed == 1
    assert http.get("/api/auth/me", headers=bearer).status_code == 401
    assert http.get("/api/auth/me", headers=cookie(session)).status_code == 401


def test_logout_with_a_bearer_token_revokes_that_token(
    server: Server, http: httpx.Client, account: str
) -> None:
    token = get_token(http, account, PASSWORD).json()["access_token"]
    other = get_token(http, account, PASSWORD).json()["access_token"]
    session = login(http, account, PASSWORD)
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/auth/me", headers=bearer).status_code == 200

    answer = http.post("/api/auth/logout", headers=bearer)
    assert answer.status_code == 204, answer.text
    assert "set-cookie" not in answer.headers  # a script has no cookie to forget
    assert http.get("/api/auth/me", headers=bearer).status_code == 401
    assert http.post("/api/job", json={"name": "after logout"}, headers=bearer).status_code == 401
    assert http.post("/api/auth/logout", headers=bearer).status_code == 401
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert server.sql("SELECT id FROM auth_tokens WHERE token_hash = :h", h=digest) == []
    # Only that token ended: the user's other token and session still sign in.
    assert http.get("/api/auth/me", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert http.get("/api/auth/me", headers=cookie(session)).status_code == 200
