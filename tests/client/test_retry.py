"""The Python client against chunk requests that are held, cut off or stalled (DESIGN §2):
423 and 408 are sent again after the server's Retry-After, a request that stops moving
is cut off after the stall timeout and sent again on a new connection, and a 409 stays
final. A faulty proxy (`faulty_proxy.py`) stands in front of a real `chute serve`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chute.client import ApiError, Client, RetryPolicy
from chute.client.retry import retryable_status
from tests.client.faulty_proxy import PASS, STALL, Answer, FaultyProxy, Verdict
from tests.client_support import KiB, chunk_posts, stored_sha256, token_of
from tests.conftest import Server, serving
from tests.factories import csv_bytes, csv_of_size

CHUNK = 64 * KiB
# Bigger than what the kernel buffers between the client and a proxy that stopped
# reading (the client's send buffer grows to 4 MiB here), so the client's writes block.
BIG_CHUNK = 8 * 1024 * KiB
FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"CHUTE_CHUNK_SIZE": str(CHUNK), "CHUTE_MAX_CHUNK_BYTES": str(2 * BIG_CHUNK)}
    with serving(tmp_path_factory.mktemp("client-retry"), **settings) as srv:
        yield srv


def proxy_for(server: Server, rule: dict[int, Verdict]) -> FaultyProxy:
    return FaultyProxy(("127.0.0.1", server.port), lambda n: rule.get(n, PASS))


def test_statuses_sent_again() -> None:
    for status in (408, 423, 429, 500, 503, 507):
        assert retryable_status(status), status
    for status in (400, 401, 403, 404, 409, 413, 422):
        assert not retryable_status(status), status


@pytest.mark.parametrize("zero_copy", [True, False], ids=["sendfile", "httpx"])
def test_423_and_408_are_sent_again_after_retry_after(
    server: Server, tmp_path: Path, zero_copy: bool
) -> None:
    data = csv_bytes(8_000)  # about 3 chunks
    path = tmp_path / "held.csv"
    path.write_bytes(data)
    user = server.client()
    rule = {0: Answer(423, retry_after=1, detail="Chunk 0 is held."), 1: Answer(408)}
    retries: list[str] = []
    with (
        proxy_for(server, rule) as proxy,
        Client(
            proxy.url, token_of(user), retry=FAST, on_retry=retries.append, zero_copy=zero_copy
        ) as chute,
    ):
        job = chute.create_job("held")
        summary = chute.upload(job.id, path, parallel=1)
        seen = proxy.chunk_requests()
    assert summary.retries == 2
    assert [s.verdict for s in seen[:3]] == [rule[0], rule[1], PASS]
    # Chunk 0 three times: held, cut off, taken; the 423's Retry-After was waited for,
    # though the policy's own backoff is a few milliseconds.
    assert [s.index for s in seen[:3]] == [0, 0, 0]
    assert seen[0].answered_at is not None and seen[1].at - seen[0].answered_at >= 1.0
    assert "Chunk 0 is held. (HTTP 423)" in retries[0]
    assert "(HTTP 408)" in retries[1]
    assert chunk_posts(server.log(), job.id) == summary.total_chunks
    assert stored_sha256(user, job.id) == hashlib.sha256(data).hexdigest()


def test_a_409_stays_final(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(csv_bytes(1_000))
    user = server.client()
    rule = {0: Answer(409, detail="Chunk 0 differs from the one already received.")}
    with proxy_for(server, rule) as proxy, Client(proxy.url, token_of(user), retry=FAST) as chute:
        job = chute.create_job("final")
        with pytest.raises(ApiError, match="differs") as caught:
            chute.upload(job.id, path)
        assert len(proxy.chunk_requests()) == 1
    assert caught.value.status == 409
    assert chunk_posts(server.log(), job.id, None) == 0


@pytest.mark.parametrize("zero_copy", [True, False], ids=["sendfile", "httpx"])
def test_a_stalled_chunk_is_cut_off_and_sent_again(
    server: Server, tmp_path: Path, zero_copy: bool
) -> None:
    """The proxy reads the start of chunk 0's body, then nothing, and never answers:
    the client gives up on it after its stall timeout and sends it on a new connection."""
    data = csv_of_size(BIG_CHUNK + 100 * KiB, seed=3)
    path = tmp_path / "stalled.csv"
    path.write_bytes(data)
    user = server.client()
    retries: list[str] = []
    with (
        proxy_for(server, {0: STALL}) as proxy,
        Client(
            proxy.url,
            token_of(user),
            retry=FAST,
            on_retry=retries.append,
            zero_copy=zero_copy,
            stall_timeout=1.0,
        ) as chute,
    ):
        job = chute.create_job("stalled")
        started = time.monotonic()
        summary = chute.upload(job.id, path, chunk_size=BIG_CHUNK, parallel=1)
        took = time.monotonic() - started
        seen = proxy.chunk_requests()
    assert summary.retries == 1
    assert [s.verdict for s in seen] == [STALL, PASS, PASS]
    assert seen[1].index == 0
    # The stall timeout (1 s) runs from the client's last write that went through. The
    # proxy notes the request once it has read its head, which on a loaded machine can
    # be after that write: the lower bound allows a fifth of a second for it.
    assert 0.8 <= seen[1].at - seen[0].at < 10, seen
    assert took < 30
    assert "chunk 0" in retries[0]
    assert stored_sha256(user, job.id) == hashlib.sha256(data).hexdigest()


def test_the_stall_timeout_is_the_write_timeout_and_set_on_sockets() -> None:
    with Client("http://127.0.0.1:1", stall_timeout=7.5) as chute:
        assert chute.http.timeout.write == 7.5
        assert chute.http.timeout.read is not None and chute.http.timeout.read > 60
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:1", stall_timeout=0)


def test_a_request_that_cannot_be_repeated_is_not_sent_again_on_retryable_answers() -> None:
    """Creating a job is not repeated on a 423 or 5xx: the job may have been made."""
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(423, headers={"Retry-After": "0"}, json={"detail": "held"})

    with Client(
        "http://chute.test", "t", retry=FAST, transport=httpx.MockTransport(answer)
    ) as chute:
        with pytest.raises(ApiError, match="held"):
            chute.create_job("once")
        assert len(calls) == 1
        with pytest.raises(ApiError, match="held"):
            chute.jobs()
        assert len(calls) == 1 + FAST.attempts
