"""Hostile and broken clients (DESIGN §2): bodies capped as they stream, chunked encoding
included; a body that stops coming cut off (408) and its chunk's part released for the
re-send; a file part sent first spooled only for the sender's own job, with room on disk;
the free-space check by the size the request declares.
"""

from __future__ import annotations

import http.client
import json
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from chute.config import Settings
from chute.serve import BODY_HIGH_WATER
from tests.api.test_upload import chunk_parts, form_body, recorded, upload_status
from tests.api.test_upload_robustness import peak_rss, serving_pids, start_raw, wait_read
from tests.conftest import Deployment, Server, ServerFactory, serving
from tests.factories import csv_bytes, csv_of_size, sha256

MiB = 1024 * 1024


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers (lower-case names) and JSON body of the answer on a raw connection."""
    answer = http.client.HTTPResponse(sock)
    try:
        answer.begin()
        body = json.loads(answer.read() or b"{}")
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body
    finally:
        answer.close()


def closed(sock: socket.socket, within: float = 5) -> bool:
    """The server closed the connection (after its answer, if any) within `within` s."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


# --- bodies of routes other than upload-data ------------------------------------------------


def send_raw(
    server: Server, path: str, pieces: Iterator[bytes], length: int | None
) -> socket.socket:
    """POST `pieces` as the body: with a Content-Length, or chunked without one."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else ""
    head += "Transfer-Encoding: chunked\r\n" if length is None else ""
    sock.sendall(head.encode() + b"\r\n")
    for piece in pieces:
        sock.sendall(piece if length is not None else b"%x\r\n%s\r\n" % (len(piece), piece))
    if length is None:
        sock.sendall(b"0\r\n\r\n")
    return sock


def big_json(size: int) -> Iterator[bytes]:
    """A JSON object of `size` bytes, in pieces of 1 MiB: one long user name."""
    yield b'{"username": "'
    for _ in range((size - 32) // MiB):
        yield b"a" * MiB
    yield b'", "password": "x"}'


def test_large_bodies_are_413_as_they_stream_and_never_held(server: Server) -> None:
    (pid,) = serving_pids(server)
    # The peak from here: it tells whether the bodies below were held in memory.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    baseline = peak_rss(pid)
    size = 50 * MiB
    detail = "The request body is larger than the limit of 65536 bytes."
    for path in ("/api/auth/login", "/api/job"):
        for length in (size, None):
            pieces = big_json(size)
            with send_raw(
                server, path, pieces, sum(map(len, big_json(size))) if length else None
            ) as sock:
                status, _, answer = answer_of(sock)
            assert (status, answer) == (413, {"detail": detail}), (path, length)
    peak = peak_rss(pid)
    assert peak - baseline < 16 * MiB, f"grew {(peak - baseline) / MiB:.0f} MiB"
    # Bodies within the limit go through as before.
    assert httpx.post(f"{server.url}/api/auth/login", json={}).status_code == 422


def test_body_that_trickles_in_is_408_and_the_connection_closed(
    make_server: ServerFactory,
) -> None:
    server = make_server(CHUTE_BODY_IDLE_TIMEOUT="2")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = b"POST /api/auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    sock.sendall(head + b"Content-Length: 1000\r\n\r\n{")
    started = time.monotonic()
    with sock:
        # A byte every 0.3 s: never idle for 2 s, yet the body never arrives.
        while not select_readable(sock, 0.3):
            sock.sendall(b" ")
            assert time.monotonic() - started < 10, "no answer"
        status, headers, answer = answer_of(sock)
        assert time.monotonic() - started < 4
        assert status == 408
        assert answer == {
            "detail": "The request body did not arrive within 2 seconds; send it again."
        }
        assert headers["connection"] == "close"
        assert closed(sock)


def select_readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


# --- a chunk whose body stops coming --------------------------------------------------------


def test_lock_timeout_must_exceed_the_body_idle_timeout() -> None:
    with pytest.raises(ValidationError, match="CHUTE_CHUNK_LOCK_TIMEOUT must exceed"):
        Settings(body_idle_timeout=30, chunk_lock_timeout=30)
    assert Settings().chunk_lock_timeout > Settings().body_idle_timeout


@pytest.fixture(scope="module")
def idle_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[Server]:
    """Cut off a body idle for 2 s; wait at most 4 s for a part another request holds (a
    file lock on local disk, a lease in the database on S3)."""
    with serving(
        tmp_path_factory.mktemp("idle"),
        deployment,
        CHUTE_BODY_IDLE_TIMEOUT="2",
        CHUTE_CHUNK_LOCK_TIMEOUT="4",
    ) as server:
        yield server


IDLE = "No byte of the request body came for 2 seconds; nothing was kept, send it again."


# A chunk whose first half is far more than the server reads ahead of the application
# (BODY_HIGH_WATER, chute/serve.py): once the server has read that half from the socket,
# the request's route has taken in most of it, so it holds the chunk's part.
HELD_BYTES = 8 * MiB
assert HELD_BYTES // 2 >= 4 * BODY_HIGH_WATER


def half_sent(server: Server, client: Any, job_id: int, data: bytes) -> socket.socket:
    """A chunk request whose body stops in the middle of the file part, as when a laptop
    sleeps: no FIN, no RST. Returns once the server has read what was sent (it then holds
    the chunk's part: what was sent is far more than the server reads ahead)."""
    content_type, body = form_body(chunk_parts(0, 1, data))
    sock = start_raw(server, client, job_id, content_type, body, body.index(data) + len(data) // 2)
    wait_read(server, sock)
    return sock


@pytest.mark.deployments
def test_chunk_whose_body_stops_is_cut_off_and_records_nothing(idle_server: Server) -> None:
    client = idle_server.client()
    job_id = client.new_job()
    data = csv_of_size(HELD_BYTES)
    with half_sent(idle_server, client, job_id, data) as sock:
        stopped = time.monotonic()
        status, headers, answer = answer_of(sock)
        assert time.monotonic() - stopped < 5
        assert (status, answer) == (408, {"detail": IDLE})
        assert headers["connection"] == "close"
        assert closed(sock)
    status_now = upload_status(client, job_id)
    assert (status_now["state"], status_now["chunks"]) == ("empty", [])
    assert client.job(job_id)["status"] == "awaiting_upload"
    # The same chunk, sent again on a new connection, is taken.
    answer = client.send_chunk(job_id, 0, 1, data)
    assert answer.status_code == 200, answer.text
    assert recorded(client, job_id) == {0: sha256(data)}


@pytest.mark.deployments
def test_resend_waits_for_the_dead_request_and_is_taken(idle_server: Server) -> None:
    client = idle_server.client()
    job_id = client.new_job()
    data = csv_of_size(HELD_BYTES)
    with half_sent(idle_server, client, job_id, data) as dead:
        started = time.monotonic()
        answer = client.send_chunk(job_id, 0, 1, data)
        waited = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is False
        # It waited for the dead request to be cut off, not for the lock timeout.
        assert waited < 4, waited
        assert answer_of(dead)[0] == 408
    assert recorded(client, job_id) == {0: sha256(data)}


@pytest.mark.deployments
def test_part_held_past_the_wait_is_423_with_retry_after(idle_server: Server) -> None:
    client = idle_server.client()
    job_id = client.new_job()
    data = csv_of_size(HELD_BYTES)
    content_type, body = form_body(chunk_parts(0, 1, data))
    sent = body.index(data) + len(data) // 2
    stop = threading.Event()
    with start_raw(idle_server, client, job_id, content_type, body, sent) as slow:
        wait_read(idle_server, slow)

        def trickle() -> None:
            # Slow but moving: never idle long enough to be cut off.
            for offset in range(sent, len(body) - 1):
                if stop.wait(0.3):
                    return
                slow.sendall(body[offset : offset + 1])

        with ThreadPoolExecutor(1) as pool:
            pool.submit(trickle)
            try:
                answer = client.send_chunk(job_id, 0, 1, data)
            finally:
                stop.set()
    assert answer.status_code == 423, answer.text
    assert answer.json() == {
        "detail": "Chunk 0 is being sent by another request; try again shortly."
    }
    assert answer.headers["retry-after"] == "5"
    assert upload_status(client, job_id)["chunks"] == []


# --- upload-data's whole body ---------------------------------------------------------------


def test_upload_body_with_a_large_epilogue_is_413(make_server: ServerFactory) -> None:
    server = make_server(CHUTE_MAX_CHUNK_BYTES=str(MiB), CHUTE_CHUNK_SIZE=str(MiB))
    client = server.client()
    job_id = client.new_job()
    data = csv_bytes(2000)
    content_type, form = form_body(chunk_parts(0, 1, data))

    def body() -> Iterator[bytes]:
        # A whole valid form, then 40 MB after its closing boundary; chunked (no length).
        yield form
        for _ in range(40):
            yield b"x" * MiB

    answer = client.http.post(
        f"/api/job/{job_id}/upload-data", content=body(), headers={"Content-Type": content_type}
    )
    assert answer.status_code == 413, answer.text
    limit = MiB + 64 * 1024
    assert answer.json() == {
        "detail": f"The request body is larger than the limit of {limit} bytes."
    }
    assert upload_status(client, job_id)["chunks"] == []
    assert client.job(job_id)["status"] == "awaiting_upload"


# --- a file part sent before the fields ----------------------------------------------------


@pytest.mark.parametrize("case", ["another-users-job", "no-such-job", "disk-full"])
def test_file_first_is_refused_before_any_byte_is_spooled(
    server: Server, make_server: ServerFactory, case: str
) -> None:
    if case == "disk-full":
        server = make_server(CHUTE_MIN_FREE_BYTES=str(10**18))
    client = server.client()
    owner = server.client() if case == "another-users-job" else client
    job_id = owner.new_job() if case != "no-such-job" else 10**6
    data = csv_of_size(4 * MiB)
    content_type, body = form_body(chunk_parts(0, 1, data, file_first=True))
    middle = body.index(data) + 2 * MiB
    spool_dir = server.data_dir / "tmp"
    with start_raw(server, client, job_id, content_type, body, middle) as sock:
        wait_read(server, sock)
        assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
        sock.sendall(body[middle:])
        status, _, answer = answer_of(sock)
    expected = {
        "another-users-job": (404, "Job not found."),
        "no-such-job": (404, "Job not found."),
        "disk-full": (507, "The server's storage is full; the chunk was discarded, send it later."),
    }[case]
    assert (status, answer) == (expected[0], {"detail": expected[1]})
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
    if case != "no-such-job":
        assert upload_status(owner, job_id)["chunks"] == []


# --- room on disk for the chunk the request declares ----------------------------------------


def test_free_space_check_uses_the_size_the_request_declares(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < 1024 * MiB:
        pytest.skip(f"needs 1 GiB free on the test disk, has {free // MiB} MiB")
    # The chunk limit takes all the free space, the reserve half of it: a chunk of the
    # limit's size would not fit, a small chunk whose request says so does, with half the
    # disk as margin either way.
    server = make_server(CHUTE_MAX_CHUNK_BYTES=str(free), CHUTE_MIN_FREE_BYTES=str(free // 2))
    client = server.client()
    data = csv_of_size(64 * 1024)
    # Chunk 0 of 2 with no chunk_size: its limit is the server's, all the free space.
    content_type, body = form_body(chunk_parts(0, 2, data))
    url = f"/api/job/{client.new_job()}/upload-data"
    # Its request's Content-Length says it is small: it fits.
    answer = client.http.post(url, content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text

    # Without a Content-Length nothing bounds the chunk but the limit: no room.
    job_id = client.new_job()
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        content=iter([body]),
        headers={"Content-Type": content_type},
    )
    assert answer.status_code == 507, answer.text
    assert upload_status(client, job_id)["chunks"] == []
