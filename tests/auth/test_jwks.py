"""Fetching the provider's keys (`chute.auth.jwks.ProviderKeys`) from a real HTTP server on
loopback that answers what a test tells it: a provider that misbehaves or is attacked."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc.jwk import ECKey

from chute.auth.jwks import MAX_ANSWER_BYTES, ProviderKeys

KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"}, private=False)
NEW_KEY = ECKey.generate_key("P-256", parameters={"kid": "k2"}, private=False)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # False: no Content-Length, the body ends when the connection closes (HTTP/1.0).
    sized: bool = True
    # Seconds between two bytes of the body: a provider that drips its answer.
    drip: float = 0.0


@dataclass
class FakeProvider:
    """What each path answers, and how often it was asked."""

    port: int = 0
    answers: dict[str, Answer] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, *keys: ECKey, jwks_uri: str | None = None, issuer: str | None = None) -> None:
        document = {"issuer": issuer or self.issuer, "jwks_uri": jwks_uri or f"{self.issuer}/jwks"}
        self.answers["/.well-known/openid-configuration"] = Answer(
            body=json.dumps(document).encode()
        )
        self.answers["/jwks"] = Answer(
            body=json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()
        )

    def keys(self, **options: float) -> ProviderKeys:
        settings = {"max_age": 3600.0, "min_interval": 60.0, **options}
        return ProviderKeys(self.issuer, **settings)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    state = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            answer = state.answers.get(self.path, Answer(404, b"{}"))
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.sized and "Content-Length" not in answer.headers:
                self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if not answer.drip:
                self.wfile.write(answer.body)
                return
            with contextlib.suppress(ConnectionError):  # the client gave up
                for byte in answer.body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(answer.drip)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def kids(source: ProviderKeys, kid: str | None) -> list[str | None]:
    return [key.kid for key in source.find(kid)]


def test_keys_are_fetched_once_and_kept(provider: FakeProvider) -> None:
    provider.publish(KEY)
    source = provider.keys()
    try:
        for _ in range(5):
            assert kids(source, "k1") == ["k1"]
        assert provider.hits == {"/.well-known/openid-configuration": 1, "/jwks": 1}
    finally:
        source.close()


def test_requests_arriving_together_share_one_fetch(provider: FakeProvider) -> None:
    provider.publish(KEY)
    source = provider.keys()
    try:
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda _: kids(source, "k1"), range(32)))
        assert found == [["k1"]] * 32
        assert provider.hits["/jwks"] == 1
    finally:
        source.close()


def test_an_unknown_kid_fetches_again_once_per_interval(provider: FakeProvider) -> None:
    provider.publish(KEY)
    source = provider.keys(min_interval=0.5)
    try:
        assert kids(source, "k1") == ["k1"]
        provider.publish(KEY, NEW_KEY)
        # Within the interval: the new key is not fetched, whatever is asked.
        assert [kids(source, f"random-{i}") for i in range(10)] == [[]] * 10
        assert kids(source, "k2") == []
        assert provider.hits["/jwks"] == 1
        time.sleep(0.6)
        assert kids(source, "k2") == ["k2"]
        assert [kids(source, f"random-{i}") for i in range(10)] == [[]] * 10
        assert provider.hits["/jwks"] == 2
    finally:
        source.close()


def test_old_keys_are_fetched_again_and_kept_when_the_fetch_fails(provider: FakeProvider) -> None:
    provider.publish(KEY)
    source = provider.keys(max_age=0.3, min_interval=0.1)
    try:
        assert kids(source, "k1") == ["k1"]
        provider.answers["/jwks"] = Answer(503, b"down")
        time.sleep(0.4)
        assert kids(source, "k1") == ["k1"]  # the fetch failed: the old keys are kept
        assert provider.hits["/jwks"] == 2
        provider.publish(NEW_KEY)
        time.sleep(0.2)
        assert kids(source, "k2") == ["k2"]
        assert kids(source, "k1") == []  # no longer published
    finally:
        source.close()


def test_the_last_jwks_uri_serves_while_discovery_fails(provider: FakeProvider) -> None:
    provider.publish(KEY)
    source = provider.keys(min_interval=0.1)
    try:
        assert kids(source, "k1") == ["k1"]
        provider.publish(KEY, NEW_KEY)
        provider.answers["/.well-known/openid-configuration"] = Answer(500, b"")
        time.sleep(0.2)
        assert kids(source, "k2") == ["k2"]
    finally:
        source.close()


@pytest.mark.parametrize(
    "spoil",
    [
        "another issuer",
        "jwks_uri not http",
        "jwks too large",
        "jwks declared too large",
        "jwks redirected",
        "jwks not json",
        "jwks not an object",
        "keys not a list",
        "discovery 404",
    ],
)
def test_a_provider_answering_nonsense_gives_no_keys(provider: FakeProvider, spoil: str) -> None:
    provider.publish(KEY)
    big = json.dumps({"keys": [KEY.as_dict()], "padding": "x" * MAX_ANSWER_BYTES}).encode()
    if spoil == "another issuer":
        provider.publish(KEY, issuer="https://evil.example.com")
    elif spoil == "jwks_uri not http":
        provider.publish(KEY, jwks_uri="file:///etc/passwd")
    elif spoil == "jwks too large":
        # No Content-Length: the size is counted as the body is read.
        provider.answers["/jwks"] = Answer(body=big, sized=False)
    elif spoil == "jwks declared too large":
        provider.answers["/jwks"] = Answer(body=b"{}", headers={"Content-Length": "99999999"})
    elif spoil == "jwks redirected":
        provider.answers["/jwks"] = Answer(302, b"", {"Location": f"{provider.issuer}/keys"})
        provider.answers["/keys"] = Answer(body=json.dumps({"keys": [KEY.as_dict()]}).encode())
    elif spoil == "jwks not json":
        provider.answers["/jwks"] = Answer(body=b"<html>keys</html>")
    elif spoil == "jwks not an object":
        provider.answers["/jwks"] = Answer(body=b"[1, 2]")
    elif spoil == "keys not a list":
        provider.answers["/jwks"] = Answer(body=b'{"keys": {"k1": 1}}')
    elif spoil == "discovery 404":
        del provider.answers["/.well-known/openid-configuration"]
    source = provider.keys()
    try:
        assert kids(source, "k1") == []
        assert kids(source, None) == []
        assert provider.hits.get("/keys", 0) == 0
    finally:
        source.close()


def test_a_provider_dripping_its_answer_is_given_up_on_in_time(provider: FakeProvider) -> None:
    provider.publish(KEY)
    slow = provider.answers["/jwks"]
    provider.answers["/jwks"] = Answer(body=slow.body, drip=0.05)  # about 10 s in all
    source = provider.keys()
    source.timeout = 1.0
    try:
        started = time.monotonic()
        assert kids(source, "k1") == []
        assert time.monotonic() - started < 2
    finally:
        source.close()


def test_a_provider_that_cannot_be_reached_gives_no_keys_quickly() -> None:
    source = ProviderKeys("http://127.0.0.1:9", max_age=3600, min_interval=60)
    try:
        started = time.monotonic()
        assert [k.kid for k in source.find("k1")] == []
        assert [k.kid for k in source.find("k1")] == []  # not tried again within the interval
        assert time.monotonic() - started < 5
    finally:
        source.close()
