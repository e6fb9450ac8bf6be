"""Limits on password guesses (DESIGN §2): 5 failures of a user name or a client address
within 15 minutes answer 429 with Retry-After, whatever the name, on both sign-in routes.

The server runs two API processes (`--workers 2`, a new connection per request, so
guesses land on both): the counters must hold across processes. It trusts 127.0.0.1 as
a proxy, so each test speaks from client addresses of its own through X-Forwarded-For.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server

PASSWORD = "pw-for-limits"
THROTTLED = "Too many failed sign-ins; try again later."
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("signin-limits")
    env = {
        **os.environ,
        "CHUTE_DATA_DIR": str(base / "data"),
        "CHUTE_MIN_FREE_BYTES": "0",
        "CHUTE_FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    server = Server(data_dir=base / "data", env=env, args=["--workers", "2"])
    server.start()
    yield server
    server.stop(kill=True)


def address() -> str:
    return next(_addresses)


def sign_in(
    server: Server, name: str, password: str, address: str, route: str = "token"
) -> httpx.Response:
    """One attempt, on a connection of its own, from `address` through the proxy."""
    headers = {"X-Forwarded-For": address}
    if route == "token":
        form = {"username": name, "password": password}
        return httpx.post(f"{server.url}/api/auth/token", data=form, headers=headers)
    body = {"username": name, "password": password}
    return httpx.post(f"{server.url}/api/auth/login", json=body, headers=headers)


def assert_throttled(answer: httpx.Response, longest: int = 60) -> int:
    assert answer.status_code == 429, answer.text
    assert answer.json() == {"detail": THROTTLED}
    wait = int(answer.headers["retry-after"])
    assert 0 < wait <= longest
    assert "set-cookie" not in answer.headers
    return wait


def tokens(server: Server) -> int:
    return int(server.sql("SELECT count(*) FROM auth_tokens")[0][0])


def test_five_wrong_passwords_then_even_the_right_one_is_429(server: Server) -> None:
    name, here = server.add_user(password=PASSWORD), address()
    routes = ["token", "login", "token", "login", "token"]
    assert [sign_in(server, name, "wrong", here, r).status_code for r in routes] == [401] * 5
    before = tokens(server)
    for route in ("token", "login"):
        assert_throttled(sign_in(server, name, PASSWORD, here, route))
    # The name is blocked from any address; nothing was issued.
    assert_throttled(sign_in(server, name, PASSWORD, address()))
    assert tokens(server) == before


def test_an_address_is_blocked_after_its_five_failures_whatever_the_names(
    server: Server,
) -> None:
    name, here = server.add_user(password=PASSWORD), address()
    for n in range(5):
        assert sign_in(server, f"guess-{n}", "wrong", here).status_code == 401
    assert_throttled(sign_in(server, name, PASSWORD, here))
    assert_throttled(sign_in(server, "guess-9", "wrong", here, "login"))
    # The name itself had no failure: from elsewhere it signs in.
    assert sign_in(server, name, PASSWORD, address()).status_code == 200


def test_a_success_before_the_fifth_failure_starts_the_count_again(server: Server) -> None:
    name, here = server.add_user(password=PASSWORD), address()
    for _ in range(3):
        assert [sign_in(server, name, "wrong", here).status_code for _ in range(4)] == [401] * 4
        assert sign_in(server, name, PASSWORD, here, "login").status_code == 200


def test_an_unknown_user_is_blocked_with_the_same_answer(server: Server) -> None:
    name = server.add_user(password=PASSWORD)
    answers = []
    for who in (name, "no-such-user"):
        here = address()
        assert [sign_in(server, who, "wrong", here).status_code for _ in range(5)] == [401] * 5
        answers.append(sign_in(server, who, "wrong", here))
    known, unknown = answers
    assert_throttled(known)
    assert_throttled(unknown)
    assert known.json() == unknown.json()
    assert known.headers["content-type"] == unknown.headers["content-type"]
