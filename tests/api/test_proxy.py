"""Behind a TLS proxy (DESIGN §2): CHUTE_PUBLIC_URL is the origin of the same-origin
rule and makes the session cookie Secure; X-Forwarded-For/-Proto count only from the
addresses in CHUTE_FORWARDED_ALLOW_IPS. The tests' "proxy" is the test itself, sending
from 127.0.0.1 what a load balancer would add."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from chute.config import Settings
from tests.conftest import ServerFactory

PUBLIC = "https://chute.example"
PASSWORD = "pw-for-proxy"
# What a TLS load balancer adds to each request it passes on.
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def login(http: httpx.Client, url: str, name: str, **headers: str) -> httpx.Response:
    answer = http.post(
        f"{url}/api/auth/login", json={"username": name, "password": PASSWORD}, headers=headers
    )
    http.cookies.clear()
    return answer


def cookie_attributes(answer: httpx.Response) -> tuple[str, list[str]]:
    """The session cookie's value and its attributes, lowercased."""
    value, *attributes = (part.strip() for part in answer.headers["set-cookie"].split(";"))
    return value.partition("=")[2], [a.lower() for a in attributes]


def test_through_a_trusted_proxy_a_cookie_write_from_the_public_origin_works(
    make_server: ServerFactory, http: httpx.Client
) -> None:
    server = make_server(CHUTE_PUBLIC_URL=PUBLIC, CHUTE_FORWARDED_ALLOW_IPS="127.0.0.1")
    name = server.add_user(password=PASSWORD)
    answer = login(http, server.url, name, **FORWARDED)
    assert answer.status_code == 200, answer.text
    session, attributes = cookie_attributes(answer)
    assert "secure" in attributes
    cookie = {"Cookie": f"chute_session={session}", **FORWARDED}

    made = http.post(
        f"{server.url}/api/job", json={"name": "via proxy"}, headers={**cookie, "Origin": PUBLIC}
    )
    assert made.status_code == 201, made.text
    # The public URL is the only origin: the address the proxy reached is another.
    for origin in (server.url, "http://chute.example", "https://evil.example"):
        refused = http.post(
            f"{server.url}/api/job",
            json={"name": f"from {origin}"},
            headers={**cookie, "Origin": origin},
        )
        assert refused.status_code == 403, origin
    names = [
        job["name"] for job in http.get(f"{server.url}/api/job", headers=cookie).json()["items"]
    ]
    assert names == ["via proxy"]
    # Logging out over https clears a Secure cookie.
    out = http.post(f"{server.url}/api/auth/logout", headers={**cookie, "Origin": PUBLIC})
    assert out.status_code == 204
    assert "secure" in cookie_attributes(out)[1]


def test_a_public_https_url_makes_the_cookie_secure_whatever_the_request_says(
    make_server: ServerFactory, http: httpx.Client
) -> None:
    server = make_server(CHUTE_PUBLIC_URL=PUBLIC)
    name = server.add_user(password=PASSWORD)
    answer = login(http, server.url, name)
    assert answer.status_code == 200, answer.text
    assert "secure" in cookie_attributes(answer)[1]


def test_forwarded_headers_from_an_untrusted_address_are_ignored(
    make_server: ServerFactory, http: httpx.Client
) -> None:
    # The proxy it trusts is elsewhere; 127.0.0.1 is just a client.
    server = make_server(CHUTE_FORWARDED_ALLOW_IPS="192.0.2.1")
    name = server.add_user(password=PASSWORD)
    answer = login(http, server.url, name, **FORWARDED)
    assert answer.status_code == 200, answer.text
    session, attributes = cookie_attributes(answer)
    assert "secure" not in attributes  # the request came over http, whatever it said
    cookie = {"Cookie": f"chute_session={session}", **FORWARDED}
    https_self = server.url.replace("http://", "https://")
    refused = http.post(
        f"{server.url}/api/job",
        json={"name": "claims https"},
        headers={**cookie, "Origin": https_self},
    )
    assert refused.status_code == 403, refused.text
    taken = http.post(
        f"{server.url}/api/job", json={"name": "plain"}, headers={**cookie, "Origin": server.url}
    )
    assert taken.status_code == 201, taken.text

    # Nor does a made-up X-Forwarded-For give a guesser new addresses: the limit counts
    # the socket's peer, so the sixth name is refused.
    for n in range(5):
        guess = http.post(
            f"{server.url}/api/auth/token",
            data={"username": f"guess-{n}", "password": "x"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        )
        assert guess.status_code == 401
    blocked = http.post(
        f"{server.url}/api/auth/token",
        data={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.99"},
    )
    assert blocked.status_code == 429, blocked.text


def test_a_trusted_proxy_names_the_client_for_the_limits(
    make_server: ServerFactory, http: httpx.Client
) -> None:
    server = make_server(CHUTE_FORWARDED_ALLOW_IPS="127.0.0.0/8")
    name = server.add_user(password=PASSWORD)
    # Five failures from five clients behind the proxy: none of them reaches the limit ...
    for n in range(5):
        guess = http.post(
            f"{server.url}/api/auth/token",
            data={"username": f"guess-{n}", "password": "x"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        )
        assert guess.status_code == 401
    answer = http.post(
        f"{server.url}/api/auth/token",
        data={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.99"},
    )
    assert answer.status_code == 200, answer.text
    # ... while five from one client do, for that client only.
    for n in range(5):
        http.post(
            f"{server.url}/api/auth/token",
            data={"username": f"other-{n}", "password": "x"},
            headers={"X-Forwarded-For": "198.51.100.50"},
        )
    assert (
        http.post(
            f"{server.url}/api/auth/token",
            data={"username": name, "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.50"},
        ).status_code
        == 429
    )
    assert (
        http.post(
            f"{server.url}/api/auth/token",
            data={"username": name, "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.51"},
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://Chute.Example", "https://chute.example"),
        ("https://chute.example:443/", "https://chute.example"),
        ("http://chute.example:8080", "http://chute.example:8080"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
        ("", ""),
    ],
)
def test_the_public_url_is_kept_as_browsers_name_the_origin(given: str, origin: str) -> None:
    assert Settings(public_url=given).public_url == origin


@pytest.mark.parametrize(
    "setting",
    [
        {"public_url": "chute.example"},
        {"public_url": "https://chute.example/app"},
        {"public_url": "https://chute.example/?x=1"},
        {"public_url": "https://user@chute.example"},
        {"public_url": "ftp://chute.example"},
        {"forwarded_allow_ips": "10.0.0.1, proxy.internal"},
        {"forwarded_allow_ips": "10.0.0.0/33"},
    ],
)
def test_a_malformed_setting_is_refused(setting: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match=f"CHUTE_{next(iter(setting)).upper()}"):
        Settings(**setting)  # type: ignore[arg-type]


def test_nothing_is_trusted_by_default() -> None:
    assert Settings().trusted_proxies == []
    assert Settings(forwarded_allow_ips="10.0.0.1, 10.1.0.0/16").trusted_proxies == [
        "10.0.0.1/32",
        "10.1.0.0/16",
    ]
