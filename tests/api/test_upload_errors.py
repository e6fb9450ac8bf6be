"""Bad chunk requests (DESIGN §2): each status with its `detail`, and nothing recorded after it."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.test_upload import (
    CHUNK,
    COMPLETE,
    STORED,
    Part,
    assert_succeeded_with,
    form_body,
    open_raw,
    post_form,
    read_answer,
    recorded,
    upload_all,
    upload_dirs,
    upload_status,
)
from tests.conftest import Client, Deployment, Server, ServerFactory, serving
from tests.factories import chunk_fields, csv_bytes, sha256, split

DATA = csv_bytes(6_000)
CHUNKS = split(DATA, CHUNK)
TOTAL = len(CHUNKS)


# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    """One user for the module's tests (each makes its own jobs): a user costs a process."""
    return server.client()


def assert_error(answer: httpx.Response, status: int, detail: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"] == detail


def assert_nothing_recorded(client: Client, job_id: int) -> None:
    status = upload_status(client, job_id)
    assert status["chunks"] == []
    assert status["bytes_received"] == 0


def fields(index: int, total: int, data: bytes) -> list[Part]:
    return [(k, v) for k, v in chunk_fields(index, total, data).items()]


# --- 401, 403, 404 -------------------------------------------------------------------


def test_no_or_invalid_token_is_401(server: Server, client: Client) -> None:
    job_id = client.new_job()

    def send(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{server.url}/api/job/{job_id}/upload-data",
            headers=headers,
            data=chunk_fields(0, TOTAL, CHUNKS[0]),
            files={"file": ("a.csv", CHUNKS[0])},
        )

    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Token abc"},
        {"Cookie": "chute_session=forged"},
    ):
        assert_error(send(headers), 401, "Not signed in.")
    assert_nothing_recorded(client, job_id)
    assert client.job(job_id)["status"] == "awaiting_upload"


def test_authentication_comes_before_the_body(server: Server, client: Client) -> None:
    """A request without a token is refused on its headers; its body is never waited for."""
    job_id = client.new_job()
    content_type, _ = form_body([*fields(0, TOTAL, CHUNKS[0]), ("file", CHUNKS[0])])
    sock = open_raw(
        server,
        f"/api/job/{job_id}/upload-data",
        {"Content-Type": content_type, "Content-Length": str(10 * CHUNK)},
    )
    with sock:
        sock.settimeout(10)
        status, body = read_answer(sock)
    assert (status, body["detail"]) == (401, "Not signed in.")
    assert_nothing_recorded(client, job_id)


def test_unknown_job_and_another_users_job_answer_the_same_404(
    server: Server, client: Client
) -> None:
    other = server.client()
    theirs = other.new_job()
    assert other.send_chunk(theirs, 0, TOTAL, CHUNKS[0]).status_code == 200
    holding = upload_status(other, theirs)

    unknown = client.send_chunk(10**9, 1, TOTAL, CHUNKS[1])
    foreign = client.send_chunk(theirs, 1, TOTAL, CHUNKS[1])
    assert_error(unknown, 404, "Job not found.")
    assert_error(foreign, 404, "Job not found.")
    for method in ("GET", "DELETE"):
        answer = client.http.request(method, f"/api/job/{theirs}/upload-data")
        assert_error(answer, 404, "Job not found.")
    assert upload_status(other, theirs) == holding


def test_cookie_upload_must_come_from_this_site(server: Server) -> None:
    name = server.add_user()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answer = http.post("/api/auth/login", json={"username": name, "password": "pw-for-tests"})
        assert answer.status_code == 200, answer.text
        assert http.cookies.get("chute_session")
        created = http.post("/api/job", json={"name": "cookie job"}, headers={"Origin": server.url})
        assert created.status_code == 201, created.text
        url = f"/api/job/{created.json()['id']}/upload-data"
        refused = "Request refused: it does not come from this site."

        def send(index: int, headers: dict[str, str]) -> httpx.Response:
            return http.post(
                url,
                headers=headers,
                data=chunk_fields(index, TOTAL, CHUNKS[index]),
                files={"file": ("a.csv", CHUNKS[index])},
            )

        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "http://127.0.0.1:1"},
            {"Origin": "null"},
            {"Referer": "https://evil.example/page"},
            {"Origin": "https://evil.example", "Referer": f"{server.url}/"},
            {},
        ):
            assert_error(send(0, headers), 403, refused)
            status = http.get(url)
            assert status.status_code == 200, status.text
            assert status.json()["chunks"] == []

        answer = send(0, {"Origin": server.url})
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"] == STORED
        answer = send(1, {"Referer": f"{server.url}/jobs"})
        assert answer.status_code == 200, answer.text

        # Discarding is a write too.
        assert_error(http.delete(url, headers={"Origin": "https://evil.example"}), 403, refused)
        assert_error(http.delete(url), 403, refused)
        assert [c["index"] for c in http.get(url).json()["chunks"]] == [0, 1]
        assert http.delete(url, headers={"Origin": server.url}).status_code == 204


def test_bearer_upload_needs_no_origin(client: Client) -> None:
    job_id = client.new_job()
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        headers={"Origin": "https://elsewhere.example"},
        data=chunk_fields(0, TOTAL, CHUNKS[0]),
        files={"file": ("a.csv", CHUNKS[0])},
    )
    assert answer.status_code == 200, answer.text


# --- 409 --------------------------------------------------------------------------------


def test_cancelled_job_does_not_accept_data(client: Client) -> None:
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, TOTAL, CHUNKS[0]).status_code == 200
    assert client.http.post(f"/api/job/{job_id}/cancel").status_code == 200
    answer = client.send_chunk(job_id, 1, TOTAL, CHUNKS[1])
    assert_error(answer, 409, "This job is not accepting data (status: cancelled).")
    assert 1 not in recorded(client, job_id)
    assert client.job(job_id)["status"] == "cancelled"

    fresh = client.new_job()
    assert client.http.post(f"/api/job/{fresh}/cancel").status_code == 200
    answer = client.send_chunk(fresh, 0, TOTAL, CHUNKS[0])
    assert_error(answer, 409, "This job is not accepting data (status: cancelled).")
    assert_nothing_recorded(client, fresh)


def test_total_chunks_that_differs_from_earlier_chunks_is_409(client: Client) -> None:
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, TOTAL, CHUNKS[0]).status_code == 200
    answer = client.send_chunk(job_id, 1, TOTAL + 1, CHUNKS[1])
    assert_error(
        answer, 409, f"total_chunks is {TOTAL + 1}, but earlier chunks of this upload said {TOTAL}."
    )
    assert recorded(client, job_id) == {0: sha256(CHUNKS[0])}


@pytest.mark.parametrize(
    ("first", "second", "detail"),
    [
        # The chunk size is fixed by chunk 0; chunk 1 is not the last yet shorter or longer.
        (
            (0, CHUNK, {}),
            (1, CHUNK // 2, {}),
            f"chunk 1 has {CHUNK // 2} bytes, but it must have {CHUNK} in this upload "
            f"(chunk size {CHUNK}; only the last chunk may be smaller)",
        ),
        (
            (0, CHUNK, {}),
            (1, CHUNK + 10, {}),
            f"chunk 1 is larger than the {CHUNK} bytes it must have in this upload "
            f"(chunk size {CHUNK})",
        ),
        # The last chunk may be shorter, never longer.
        (
            (0, CHUNK, {}),
            (3, CHUNK + 10, {}),
            f"chunk 3 is larger than the {CHUNK} bytes it must have in this upload "
            f"(chunk size {CHUNK})",
        ),
        # The chunk size named by the form field, then a chunk of another size.
        (
            (0, CHUNK, {"chunk_size": CHUNK}),
            (2, CHUNK - 1, {"chunk_size": CHUNK}),
            f"chunk 2 has {CHUNK - 1} bytes, but it must have {CHUNK} in this upload "
            f"(chunk size {CHUNK}; only the last chunk may be smaller)",
        ),
        (
            (0, CHUNK, {"chunk_size": CHUNK}),
            (1, CHUNK, {"chunk_size": CHUNK * 2}),
            f"chunk_size is {CHUNK * 2}, but this upload's chunk size is {CHUNK}",
        ),
        # A last chunk that came first, then a chunk size smaller than it.
        (
            (3, CHUNK, {}),
            (0, CHUNK // 2, {}),
            f"chunk_size {CHUNK // 2} is smaller than the last chunk already stored "
            f"({CHUNK} bytes)",
        ),
    ],
    ids=["shorter", "longer", "last-longer", "field-then-shorter", "field-differs", "last-first"],
)
def test_chunk_that_breaks_the_chunk_size_is_409(
    client: Client,
    first: tuple[int, int, dict[str, Any]],
    second: tuple[int, int, dict[str, Any]],
    detail: str,
) -> None:
    data = csv_bytes(20_000)
    total = 4
    job_id = client.new_job()
    index, size, extra = first
    answer = client.send_chunk(job_id, index, total, data[:size], **extra)
    assert answer.status_code == 200, answer.text
    before = upload_status(client, job_id)

    index, size, extra = second
    answer = client.send_chunk(job_id, index, total, data[size : 2 * size], **extra)
    assert_error(answer, 409, detail)
    assert upload_status(client, job_id) == before


def test_file_size_is_checked_against_the_chunks(client: Client) -> None:
    size = len(DATA)
    # Inconsistent on its own: 3 chunks of CHUNK bytes cannot make a file of 2 * CHUNK.
    job_id = client.new_job()
    answer = client.send_chunk(job_id, 0, 3, CHUNKS[0], chunk_size=CHUNK, file_size=2 * CHUNK)
    assert_error(
        answer,
        409,
        f"a file of {2 * CHUNK} bytes in chunks of {CHUNK} bytes has 2 chunks, not total_chunks 3",
    )
    assert_error(
        client.send_chunk(job_id, 0, 3, CHUNKS[0], file_size=2),
        422,
        "total_chunks is larger than file_size: every chunk has a byte",
    )
    assert_nothing_recorded(client, job_id)

    # Consistent, then contradicted by a later chunk or by the last chunk's size.
    answer = client.send_chunk(job_id, 0, TOTAL, CHUNKS[0], chunk_size=CHUNK, file_size=size)
    assert answer.status_code == 200, answer.text
    before = upload_status(client, job_id)
    assert before["file_size"] == size
    answer = client.send_chunk(job_id, 1, TOTAL, CHUNKS[1], file_size=size + 1)
    assert_error(answer, 409, f"file_size is {size + 1}, but earlier chunks said {size}")
    short = CHUNKS[-1][:-1]
    answer = client.send_chunk(job_id, TOTAL - 1, TOTAL, short)
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"].startswith(
        f"chunk {TOTAL - 1} has {len(short)} bytes, but it must have {len(CHUNKS[-1])}"
    )
    assert upload_status(client, job_id) == before
    answers = [client.send_chunk(job_id, i, TOTAL, c) for i, c in enumerate(CHUNKS)]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, DATA)


def test_same_index_with_other_bytes_is_409(client: Client) -> None:
    job_id = client.new_job()
    assert client.send_chunk(job_id, 1, TOTAL, CHUNKS[1]).status_code == 200
    answer = client.send_chunk(job_id, 1, TOTAL, CHUNKS[2][: len(CHUNKS[1])])
    assert_error(answer, 409, "Chunk 1 is already stored with different bytes.")
    assert recorded(client, job_id) == {1: sha256(CHUNKS[1])}


# --- 413 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[Server]:
    """A server whose chunks may have at most CHUNK bytes, and two of them per file."""
    with serving(
        tmp_path_factory.mktemp("chute-small"),
        deployment,
        CHUTE_MAX_CHUNK_BYTES=str(CHUNK),
        CHUTE_CHUNK_SIZE=str(CHUNK),
        CHUTE_MAX_FILE_BYTES=str(2 * CHUNK),
    ) as srv:
        yield srv


def test_chunk_over_the_limit_is_413(small_server: Server) -> None:
    client = small_server.client()
    job_id = client.new_job()
    too_big = csv_bytes(5_000)[: CHUNK + 1]
    detail = f"The chunk is larger than the limit of {CHUNK} bytes."
    # Measured as it streams: the request is well within the limit with its form around it.
    assert_error(client.send_chunk(job_id, 0, 2, too_big), 413, detail)
    # The same without a Content-Length (chunked transfer).
    content_type, body = form_body([*fields(0, 2, too_big), ("file", too_big)])
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"Content-Type": content_type},
    )
    assert_error(answer, 413, detail)
    # A chunk_size over the limit.
    answer = client.send_chunk(job_id, 0, 2, too_big[:100], chunk_size=CHUNK + 1)
    assert_error(answer, 413, detail)
    assert_nothing_recorded(client, job_id)

    # A client still sending a body far over the limit gets the answer too.
    huge = csv_bytes(100_000)
    assert_error(client.send_chunk(job_id, 0, 2, huge), 413, detail)
    assert_nothing_recorded(client, job_id)

    fits = too_big[:CHUNK]
    assert client.send_chunk(job_id, 0, 2, fits).json()["message"] == STORED


def test_content_length_over_the_limit_is_413_before_the_body(small_server: Server) -> None:
    client = small_server.client()
    job_id = client.new_job()
    content_type, _ = form_body([*fields(0, 2, CHUNKS[0]), ("file", CHUNKS[0])])
    sock = open_raw(
        small_server,
        f"/api/job/{job_id}/upload-data",
        {
            "Authorization": client.http.headers["Authorization"],
            "Content-Type": content_type,
            "Content-Length": str(100 * CHUNK),
        },
    )
    with sock:
        sock.settimeout(10)
        status, body = read_answer(sock)
    assert (status, body["detail"]) == (
        413,
        f"The chunk is larger than the limit of {CHUNK} bytes.",
    )
    assert_nothing_recorded(client, job_id)


def test_file_over_the_limit_is_413(small_server: Server) -> None:
    client = small_server.client()
    job_id = client.new_job()
    before = upload_dirs(small_server)
    detail = f"The file is larger than the limit of {2 * CHUNK} bytes."
    answer = client.send_chunk(job_id, 0, 3, CHUNKS[0], file_size=2 * CHUNK + 1)
    assert_error(answer, 413, detail)
    answer = client.send_chunk(job_id, 0, 3, CHUNKS[0], chunk_size=CHUNK)
    assert_error(answer, 413, detail)
    assert_nothing_recorded(client, job_id)
    assert upload_dirs(small_server) == before


# --- 422 --------------------------------------------------------------------------------

GOOD = CHUNKS[0]
NOT_CSV = "This does not look like a CSV file: "


@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ([("total_chunks", "3"), ("file", GOOD)], "the field chunk_index is missing"),
        ([("chunk_index", "0"), ("file", GOOD)], "the field total_chunks is missing"),
        ([("chunk_index", "0"), ("total_chunks", "3")], "the field file is missing"),
        (
            [("chunk_index", "zero"), ("total_chunks", "3"), ("file", GOOD)],
            "the field chunk_index must be a whole number, not 'zero'",
        ),
        (
            [("chunk_index", "-1"), ("total_chunks", "3"), ("file", GOOD)],
            "the field chunk_index must be a whole number, not '-1'",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "2.5"), ("file", GOOD)],
            "the field total_chunks must be a whole number, not '2.5'",
        ),
        (
            [("chunk_index", "3"), ("total_chunks", "3"), ("file", GOOD)],
            "chunk_index must be between 0 and 2 (total_chunks - 1)",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "0"), ("file", GOOD)],
            "total_chunks must be between 1 and 100000",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "100001"), ("file", GOOD)],
            "total_chunks must be between 1 and 100000",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "3"), ("chunk_sha256", "abc"), ("file", GOOD)],
            "chunk_sha256 must be 64 hexadecimal digits",
        ),
        (
            [("chunk_index", "0"), ("chunkIndex", "0"), ("total_chunks", "3"), ("file", GOOD)],
            "the field chunk_index was sent twice",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "3"), ("upload", GOOD)],
            "send one file part, named 'file'",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "3"), ("file", GOOD), ("file", GOOD)],
            "send one file part, named 'file'",
        ),
        (
            [("chunk_index", "0"), ("total_chunks", "3"), ("chunk_size", "0"), ("file", GOOD)],
            "chunk_size must be at least 1",
        ),
    ],
    ids=[
        "no-index",
        "no-total",
        "no-file",
        "index-word",
        "index-negative",
        "total-fraction",
        "index-out-of-range",
        "total-zero",
        "total-over-max",
        "sha-malformed",
        "index-twice",
        "file-misnamed",
        "two-files",
        "chunk-size-zero",
    ],
)
def test_missing_or_malformed_field_is_422(client: Client, parts: list[Part], detail: str) -> None:
    job_id = client.new_job()
    assert_error(post_form(client, job_id, parts), 422, detail)
    assert_nothing_recorded(client, job_id)


@pytest.mark.parametrize(
    ("index", "data", "detail"),
    [
        (1, b"", "The chunk is empty."),
        (0, b"", "The chunk is empty."),
        (0, b"id,name\n1,a\x00b\n", NOT_CSV + "it contains NUL bytes, so it is binary, not text"),
        (
            0,
            GOOD[:1000] + b"\x00" + GOOD[1000:],
            NOT_CSV + "it contains NUL bytes, so it is binary, not text",
        ),
        (0, gzip.compress(GOOD), NOT_CSV + "it is gzip-compressed"),
        (0, b"PK\x03\x04" + GOOD, NOT_CSV + "it is a ZIP archive (an .xlsx workbook is one)"),
        (0, b"\n" + GOOD, NOT_CSV + "the first line, where the header belongs, is empty"),
        (0, b"  \r\n" + GOOD, NOT_CSV + "the first line, where the header belongs, is empty"),
        (
            0,
            b"\x01\x02\x03\xff\xfe" * 100 + b"\n",
            NOT_CSV + "it is neither UTF-8 nor single-byte text",
        ),
    ],
    ids=[
        "empty",
        "empty-first",
        "nul",
        "nul-later",
        "gzip",
        "zip",
        "blank-header",
        "blank-crlf",
        "binary",
    ],
)
def test_bad_chunk_bytes_are_422(client: Client, index: int, data: bytes, detail: str) -> None:
    job_id = client.new_job()
    answer = client.send_chunk(job_id, index, TOTAL, data)
    assert_error(answer, 422, detail)
    assert_nothing_recorded(client, job_id)


def test_checksum_mismatch_is_422(client: Client) -> None:
    job_id = client.new_job()
    claimed = sha256(CHUNKS[1])
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        data={**chunk_fields(0, TOTAL), "chunk_sha256": claimed.upper()},
        files={"file": ("a.csv", CHUNKS[0])},
    )
    assert_error(
        answer,
        422,
        f"The chunk's SHA-256 is {sha256(CHUNKS[0])}, not the chunk_sha256 sent ({claimed}).",
    )
    assert_nothing_recorded(client, job_id)
    # The checksum is optional, and a correct one in capitals is fine.
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        data={**chunk_fields(0, TOTAL), "chunk_sha256": sha256(CHUNKS[0]).upper()},
        files={"file": ("a.csv", CHUNKS[0])},
    )
    assert answer.status_code == 200, answer.text
    answer = client.send_chunk(job_id, 1, TOTAL, CHUNKS[1], checksum=False)
    assert answer.status_code == 200, answer.text
    assert recorded(client, job_id) == {0: sha256(CHUNKS[0]), 1: sha256(CHUNKS[1])}


MALFORMED = "The request body is not valid multipart/form-data: "


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [
        ("application/json", b'{"chunk_index": 0}', "the Content-Type must be multipart/form-data"),
        (
            "application/x-www-form-urlencoded",
            b"chunk_index=0&total_chunks=3",
            "the Content-Type must be multipart/form-data",
        ),
        (None, b"chunk_index=0", "the Content-Type must be multipart/form-data"),
        ("multipart/form-data", b"--x\r\n", "the Content-Type has no boundary"),
        ("multipart/form-data; boundary=xyz", b"just some bytes", None),
        ("multipart/form-data; boundary=xyz", b"", None),
        # A form whose closing boundary never comes.
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="chunk_index"\r\n\r\n0\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="total_chunks"\r\n\r\n3\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
            + GOOD,
            None,
        ),
    ],
    ids=["json", "urlencoded", "no-type", "no-boundary", "garbage", "empty", "unterminated"],
)
def test_body_that_is_not_multipart_is_422(
    client: Client, content_type: str | None, body: bytes, detail: str | None
) -> None:
    job_id = client.new_job()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.http.post(f"/api/job/{job_id}/upload-data", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    if detail is None:
        assert answer.json()["detail"].startswith(MALFORMED)
    else:
        assert answer.json()["detail"] == MALFORMED + detail
    assert_nothing_recorded(client, job_id)


def test_refused_first_chunk_binds_no_sizes(server: Server, client: Client) -> None:
    """Bad input changes nothing: a refused first chunk fixes neither total_chunks nor the
    chunk size, so the right file may follow the wrong one whatever its sizes."""
    job_id = client.new_job()
    wrong = gzip.compress(DATA + DATA)
    answer = client.send_chunk(job_id, 0, 7, wrong[: CHUNK // 2], chunk_size=CHUNK // 2)
    assert answer.status_code == 422, answer.text
    assert_nothing_recorded(client, job_id)
    # Not even the job's status moved: to a client, nothing happened.
    assert upload_status(client, job_id)["state"] == "empty"
    job = client.job(job_id)
    assert (job["status"], job["upload"]) == ("awaiting_upload", None)
    before = upload_dirs(server)

    answers = upload_all(client, job_id, CHUNKS)
    assert [a.status_code for a in answers] == [200] * TOTAL, [a.text for a in answers]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, DATA)
    # The storage the refused chunk opened is not left behind.
    assert upload_dirs(server) <= before


# --- 429 --------------------------------------------------------------------------------


def test_too_many_uploads_at_once_is_429(make_server: ServerFactory) -> None:
    server = make_server(CHUTE_MAX_UPLOADS_PER_USER="1")
    client = server.client()
    slow_job, job_id = client.new_job(), client.new_job()
    content_type, body = form_body([*fields(0, TOTAL, CHUNKS[0]), ("file", CHUNKS[0])])
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        release.wait(timeout=60)
        yield body[len(body) // 2 :]

    def probe() -> httpx.Response:
        # Refused as 422 when a slot is free, 429 when not: it never records anything.
        return client.send_chunk(job_id, 0, 0, CHUNKS[0])

    with ThreadPoolExecutor(1) as pool:
        slow: Future[httpx.Response] = pool.submit(
            client.http.post,
            f"/api/job/{slow_job}/upload-data",
            content=slow_body(),
            headers={"Content-Type": content_type},
        )
        try:
            deadline = time.monotonic() + 30
            while (answer := probe()).status_code != 429:
                assert answer.status_code == 422, answer.text
                assert time.monotonic() < deadline, "the slow request never took its slot"
                time.sleep(0.05)
            detail = "Too many uploads at once for this user; try again shortly."
            assert answer.json()["detail"] == detail
            assert_error(client.send_chunk(job_id, 0, TOTAL, CHUNKS[0]), 429, detail)
            assert_nothing_recorded(client, job_id)
            # Other users have their own slots.
            other = server.client()
            assert other.send_chunk(other.new_job(), 0, TOTAL, CHUNKS[0]).status_code == 200
        finally:
            release.set()
        assert slow.result(timeout=60).status_code == 200
    assert client.send_chunk(job_id, 0, TOTAL, CHUNKS[0]).status_code == 200
    assert recorded(client, job_id) == {0: sha256(CHUNKS[0])}


# --- 507 --------------------------------------------------------------------------------


def test_storage_full_is_507_and_the_chunk_can_be_sent_later(make_server: ServerFactory) -> None:
    server = make_server()
    client = server.client()
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, TOTAL, CHUNKS[0]).status_code == 200
    token = client.http.headers["Authorization"]

    def restart(min_free: int) -> httpx.Client:
        server.stop()
        server.env["CHUTE_MIN_FREE_BYTES"] = str(min_free)
        server.start()
        return httpx.Client(base_url=server.url, headers={"Authorization": token}, timeout=60)

    with restart(10**18) as http:
        full = Client(http, client.username, client.data_dir)
        answer = full.send_chunk(job_id, 1, TOTAL, CHUNKS[1])
        detail = "The server's storage is full; the chunk was discarded, send it later."
        assert_error(answer, 507, detail)
        assert recorded(full, job_id) == {0: sha256(CHUNKS[0])}
        # A chunk already stored needs no room: its re-send is still answered.
        assert full.send_chunk(job_id, 0, TOTAL, CHUNKS[0]).status_code == 200

    with restart(0) as http:
        roomy = Client(http, client.username, client.data_dir)
        answers = [roomy.send_chunk(job_id, i, TOTAL, c) for i, c in enumerate(CHUNKS)]
        assert [a.status_code for a in answers] == [200] * TOTAL
        assert answers[-1].json()["message"] == COMPLETE
        assert_succeeded_with(roomy, job_id, DATA)
