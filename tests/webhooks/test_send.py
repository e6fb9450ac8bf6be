"""One attempt's request (`chute.webhooks.delivery.send`): every way it can go wrong ends
in an outcome to record, never an exception that would leave the delivery claimed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from chute.config import Settings
from chute.webhooks.delivery import NOT_PUBLIC, Attempt, Outcome, Policy, send
from chute.webhooks.signing import new_secret
from tests.webhooks.receiver import receiving


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        yield client


def attempt(url: str) -> Attempt:
    return Attempt(1, "c" * 32, 7, url, "msg_test", '{"type":"job.running"}', [new_secret()])


def policy(allow_private: bool) -> Policy:
    return Policy.of(
        Settings(webhook_allow_private=allow_private, webhook_timeout=1, webhook_connect_timeout=1)
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_url_the_client_refuses_is_an_outcome(http: httpx.Client) -> None:
    outcome = send(http, attempt("http://" + "é" * 70 + ".example/"), policy(True))
    assert outcome == Outcome(None, "The request could not be made: InvalidURL.")


def test_no_connection_is_an_outcome(http: httpx.Client) -> None:
    outcome = send(http, attempt(f"http://127.0.0.1:{closed_port()}/"), policy(True))
    assert outcome == Outcome(None, "The request failed: ConnectError.")


def test_a_private_address_is_final(http: httpx.Client) -> None:
    outcome = send(http, attempt(f"http://localhost:{closed_port()}/"), policy(False))
    assert outcome == Outcome(None, NOT_PUBLIC, final=True)


def test_an_answer_is_read_for_its_status_only(http: httpx.Client) -> None:
    with receiving(script=lambda n: 204) as receiver:
        one = attempt(receiver.url)
        receiver.secrets.extend(one.keys)
        assert send(http, one, policy(True)) == Outcome(204, None)
        [got] = receiver.received
    assert got.verified_with == one.keys[0]
    assert got.webhook_id == "msg_test"
