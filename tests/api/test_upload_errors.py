"""Bad chunk requests (DESIGN §2): each status with its `detail`, and nothing recorded after it.

Uploads are sized in the deployment's `chunk` (conftest): on S3 every chunk but the last
is at least a 5 MiB part, so that each request here is bad in one way only.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.api.test_upload import (
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
    upload_status,
)
from tests.conftest import Client, Deployment, Server, ServerFactory, serving, storage_holds
from tests.factories import chunk_fields, csv_of_size, sha256, split

# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def data(chunk: int) -> bytes:
    """The module's file: three chunks, the last a quarter of one."""
    return csv_of_size(2 * chunk + chunk // 4)


@pytest.fixture(scope="module")
def chunks(data: bytes, chunk: int) -> list[bytes]:
    return split(data, chunk)


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    """One user for the module's tests (each makes its own jobs)."""
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


def test_no_or_invalid_token_is_401(server: Server, client: Client, chunks: list[bytes]) -> None:
    job_id = client.new_job()

    def send(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{server.url}/api/job/{job_id}/upload-data",
            headers=headers,
            data=chunk_fields(0, len(chunks), chunks[0]),
            files={"file": ("a.csv", chunks[0])},
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


def test_authentication_comes_before_the_body(
    server: Server, client: Client, chunks: list[bytes]
) -> None:
    """A request without a token is refused on its headers; its body is never waited for."""
    job_id = client.new_job()
    content_type, _ = form_body([*fields(0, len(chunks), chunks[0]), ("file", chunks[0])])
    sock = open_raw(
        server,
        f"/api/job/{job_id}/upload-data",
        {"Content-Type": content_type, "Content-Length": str(10 * len(chunks[0]))},
    )
    with sock:
        sock.settimeout(10)
        status, body = read_answer(sock)
    assert (status, body["detail"]) == (401, "Not signed in.")
    assert_nothing_recorded(client, job_id)


def test_unknown_job_and_another_users_job_answer_the_same_404(
    server: Server, client: Client, chunks: list[bytes]
) -> None:
    total = len(chunks)
    other = server.client()
    theirs = other.new_job()
    assert other.send_chunk(theirs, 0, total, chunks[0]).status_code == 200
    holding = upload_status(other, theirs)

    unknown = client.send_chunk(10**9, 1, total, chunks[1])
    foreign = client.send_chunk(theirs, 1, total, chunks[1])
    assert_error(unknown, 404, "Job not found.")
    assert_error(foreign, 404, "Job not found.")
    for method in ("GET", "DELETE"):
        answer = client.http.request(method, f"/api/job/{theirs}/upload-data")
        assert_error(answer, 404, "Job not found.")
    assert upload_status(other, theirs) == holding


def test_cookie_upload_must_come_from_this_site(server: Server, chunks: list[bytes]) -> None:
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
                data=chunk_fields(index, len(chunks), chunks[index]),
                files={"file": ("a.csv", chunks[index])},
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


def test_bearer_upload_needs_no_origin(client: Client, chunks: list[bytes]) -> None:
    job_id = client.new_job()
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        headers={"Origin": "https://elsewhere.example"},
        data=chunk_fields(0, len(chunks), chunks[0]),
        files={"file": ("a.csv", chunks[0])},
    )
    assert answer.status_code == 200, answer.text


# --- 409 --------------------------------------------------------------------------------


def test_cancelled_job_does_not_accept_data(client: Client, chunks: list[bytes]) -> None:
    total = len(chunks)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
    assert client.http.post(f"/api/job/{job_id}/cancel").status_code == 200
    answer = client.send_chunk(job_id, 1, total, chunks[1])
    assert_error(answer, 409, "This job is not accepting data (status: cancelled).")
    assert 1 not in recorded(client, job_id)
    assert client.job(job_id)["status"] == "cancelled"

    fresh = client.new_job()
    assert client.http.post(f"/api/job/{fresh}/cancel").status_code == 200
    answer = client.send_chunk(fresh, 0, total, chunks[0])
    assert_error(answer, 409, "This job is not accepting data (status: cancelled).")
    assert_nothing_recorded(client, fresh)


def test_total_chunks_that_differs_from_earlier_chunks_is_409(
    client: Client, chunks: list[bytes]
) -> None:
    total = len(chunks)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
    answer = client.send_chunk(job_id, 1, total + 1, chunks[1])
    assert_error(
        answer, 409, f"total_chunks is {total + 1}, but earlier chunks of this upload said {total}."
    )
    assert recorded(client, job_id) == {0: sha256(chunks[0])}


# A chunk: (index, size, extra fields).
SentChunk = tuple[int, int, dict[str, Any]]


def size_cases(c: int) -> dict[str, tuple[SentChunk, SentChunk, str]]:
    """A first chunk, then a second that breaks the chunk size `c`, and the detail of its 409.
    Every size is at least c / 2: on S3 that is a whole part, so only the size is wrong."""
    return {
        # The chunk size is fixed by chunk 0; chunk 1 is not the last yet shorter or longer.
        "shorter": (
            (0, c, {}),
            (1, c // 2, {}),
            f"chunk 1 has {c // 2} bytes, but it must have {c} in this upload "
            f"(chunk size {c}; only the last chunk may be smaller)",
        ),
        "longer": (
            (0, c, {}),
            (1, c + 10, {}),
            f"chunk 1 is larger than the {c} bytes it must have in this upload (chunk size {c})",
        ),
        # The last chunk may be shorter, never longer.
        "last-longer": (
            (0, c, {}),
            (3, c + 10, {}),
            f"chunk 3 is larger than the {c} bytes it must have in this upload (chunk size {c})",
        ),
        # The chunk size named by the form field, then a chunk of another size.
        "field-then-shorter": (
            (0, c, {"chunk_size": c}),
            (2, c - 1, {"chunk_size": c}),
            f"chunk 2 has {c - 1} bytes, but it must have {c} in this upload "
            f"(chunk size {c}; only the last chunk may be smaller)",
        ),
        "field-differs": (
            (0, c, {"chunk_size": c}),
            (1, c, {"chunk_size": c * 2}),
            f"chunk_size is {c * 2}, but this upload's chunk size is {c}",
        ),
        # A last chunk that came first, then a chunk size smaller than it.
        "last-first": (
            (3, c, {}),
            (0, c // 2, {}),
            f"chunk_size {c // 2} is smaller than the last chunk already stored ({c} bytes)",
        ),
    }


@pytest.mark.parametrize("case", list(size_cases(2)))  # the cases' names
def test_chunk_that_breaks_the_chunk_size_is_409(client: Client, chunk: int, case: str) -> None:
    first, second, detail = size_cases(2 * chunk)[case]
    data = csv_of_size(5 * chunk)
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


def test_file_size_is_checked_against_the_chunks(
    client: Client, chunk: int, data: bytes, chunks: list[bytes]
) -> None:
    size, total = len(data), len(chunks)
    # Inconsistent on its own: 3 chunks of `chunk` bytes cannot make a file of 2 * chunk.
    job_id = client.new_job()
    answer = client.send_chunk(job_id, 0, 3, chunks[0], chunk_size=chunk, file_size=2 * chunk)
    assert_error(
        answer,
        409,
        f"a file of {2 * chunk} bytes in chunks of {chunk} bytes has 2 chunks, not total_chunks 3",
    )
    answer = client.send_chunk(job_id, 0, 3, chunks[0], chunk_size=chunk, file_size=3 * chunk + 1)
    assert_error(
        answer,
        409,
        f"a file of {3 * chunk + 1} bytes in chunks of {chunk} bytes has 4 chunks, "
        "not total_chunks 3",
    )
    assert_error(
        client.send_chunk(job_id, 0, 3, chunks[0], file_size=2),
        422,
        "total_chunks is larger than file_size: every chunk has a byte",
    )
    assert_error(
        client.send_chunk(job_id, 0, 3, chunks[0], file_size="5e3"),
        422,
        "the field file_size must be a whole number, not '5e3'",
    )
    assert_nothing_recorded(client, job_id)

    # Consistent, then contradicted by a later chunk or by the last chunk's size.
    answer = client.send_chunk(job_id, 0, total, chunks[0], chunk_size=chunk, file_size=size)
    assert answer.status_code == 200, answer.text
    before = upload_status(client, job_id)
    assert before["file_size"] == size
    answer = client.send_chunk(job_id, 1, total, chunks[1], file_size=size + 1)
    assert_error(answer, 409, f"file_size is {size + 1}, but earlier chunks said {size}")
    short = chunks[-1][:-1]
    answer = client.send_chunk(job_id, total - 1, total, short)
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == (
        f"chunk {total - 1} has {len(short)} bytes, but it must have {len(chunks[-1])} "
        f"in this upload (file_size {size}, chunk size {chunk})"
    )
    assert upload_status(client, job_id) == before
    answers = [client.send_chunk(job_id, i, total, c) for i, c in enumerate(chunks)]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, data)


def test_file_size_must_be_the_size_of_a_single_chunk(client: Client) -> None:
    """A chunk over file_size is refused as it streams; one under it cannot complete."""
    data = csv_of_size(128)
    job_id = client.new_job()
    answer = client.send_chunk(job_id, 0, 1, data, file_size=5)
    assert_error(
        answer,
        409,
        "chunk 0 has more than the 5 bytes of the file (file_size 5) that are not stored yet",
    )
    assert_nothing_recorded(client, job_id)
    answer = client.send_chunk(job_id, 0, 1, data, file_size=len(data) + 10)
    assert_error(
        answer, 409, f"the chunks add up to {len(data)} bytes, not the file_size {len(data) + 10}"
    )
    assert_nothing_recorded(client, job_id)
    # Not queued, and the upload is open: the right size completes it.
    assert client.job(job_id)["status"] == "awaiting_upload"
    answer = client.send_chunk(job_id, 0, 1, data, file_size=len(data))
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, data)


def test_wrong_file_size_never_completes_an_upload(
    client: Client, chunk: int, data: bytes, chunks: list[bytes]
) -> None:
    size, total, last = len(data), len(chunks), len(chunks[-1])
    job_id = client.new_job()
    # Before the chunk size is known, a chunk may have what file_size leaves: no more.
    answer = client.send_chunk(job_id, total - 1, total, chunks[-1], file_size=last - 1)
    assert_error(
        answer,
        409,
        f"chunk {total - 1} has more than the {last - 1} bytes of the file "
        f"(file_size {last - 1}) that are not stored yet",
    )
    assert_nothing_recorded(client, job_id)

    # The last chunk first, with a file_size one byte too large: nothing can tell yet.
    answer = client.send_chunk(job_id, total - 1, total, chunks[-1], file_size=size + 1)
    assert answer.status_code == 200, answer.text
    before = upload_status(client, job_id)
    # The chunk that fixes the chunk size tells: 2 chunks of `chunk` bytes and the last.
    detail = (
        f"file_size is {size + 1}, but {total - 1} chunks of {chunk} bytes and the last "
        f"chunk already stored ({last} bytes) make a file of {size} bytes"
    )
    for index in range(total - 1):
        assert_error(client.send_chunk(job_id, index, total, chunks[index]), 409, detail)
    assert upload_status(client, job_id) == before
    assert client.job(job_id)["status"] == "uploading"
    # A later chunk that names another file_size is refused as well.
    answer = client.send_chunk(job_id, 0, total, chunks[0], file_size=size)
    assert_error(answer, 409, f"file_size is {size}, but earlier chunks said {size + 1}")

    # Discarded, the upload starts again with the right file_size, and completes.
    assert client.http.delete(f"/api/job/{job_id}/upload-data").status_code == 204
    answers = [client.send_chunk(job_id, i, total, c, file_size=size) for i, c in enumerate(chunks)]
    assert [a.status_code for a in answers] == [200] * total, [a.text for a in answers]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, data)


def test_a_refused_chunk_binds_no_file_size(
    client: Client, data: bytes, chunks: list[bytes]
) -> None:
    size, total = len(data), len(chunks)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
    # A wrong file_size on a chunk refused for its checksum is forgotten with it.
    answer = client.send_chunk(
        job_id, total - 1, total, chunks[-1], file_size=size + 1, chunk_sha256="0" * 64
    )
    assert answer.status_code == 422, answer.text
    assert upload_status(client, job_id)["file_size"] is None
    answer = client.send_chunk(job_id, total - 1, total, chunks[-1], file_size=size)
    assert answer.status_code == 200, answer.text
    assert upload_status(client, job_id)["file_size"] == size
    answer = client.send_chunk(job_id, 1, total, chunks[1])
    assert answer.json()["message"] == COMPLETE
    # After completion a file_size that is not the file's is refused, the right one taken.
    assert_error(
        client.send_chunk(job_id, 1, total, chunks[1], file_size=size + 1),
        409,
        f"file_size is {size + 1}, but earlier chunks said {size}",
    )
    assert client.send_chunk(job_id, 1, total, chunks[1], file_size=size).status_code == 200
    assert_succeeded_with(client, job_id, data)


def test_same_index_with_other_bytes_is_409(client: Client, chunks: list[bytes]) -> None:
    total = len(chunks)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 1, total, chunks[1]).status_code == 200
    # Other bytes of the same size, and of another size (the last chunk's bytes).
    for other in (chunks[0][: len(chunks[1])], chunks[2]):
        answer = client.send_chunk(job_id, 1, total, other)
        assert_error(answer, 409, "Chunk 1 is already stored with different bytes.")
    assert recorded(client, job_id) == {1: sha256(chunks[1])}


# --- 413 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment, chunk: int
) -> Iterator[Server]:
    """A server whose chunks may have at most `chunk` bytes, and two of them per file."""
    with serving(
        tmp_path_factory.mktemp("chute-small"),
        deployment,
        CHUTE_MAX_CHUNK_BYTES=str(chunk),
        CHUTE_CHUNK_SIZE=str(chunk),
        CHUTE_MAX_FILE_BYTES=str(2 * chunk),
    ) as srv:
        yield srv


def test_chunk_over_the_limit_is_413(
    small_server: Server, deployment: Deployment, chunk: int, data: bytes
) -> None:
    client = small_server.client()
    job_id = client.new_job()
    too_big = data[: chunk + 1]
    detail = f"The chunk is larger than the limit of {chunk} bytes."
    # Measured as it streams: the request is well within the limit with its form around it.
    assert_error(client.send_chunk(job_id, 0, 2, too_big), 413, detail)
    # The same without a Content-Length (chunked transfer). S3 needs a part's size before
    # its bytes: there, such a request is refused on its headers (README, S3 storage).
    content_type, body = form_body([*fields(0, 2, too_big), ("file", too_big)])
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"Content-Type": content_type},
    )
    if deployment.s3:
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].endswith("send a Content-Length.")
    else:
        assert_error(answer, 413, detail)
    # A chunk_size over the limit.
    answer = client.send_chunk(job_id, 0, 2, too_big[:100], chunk_size=chunk + 1)
    assert_error(answer, 413, detail)
    assert_nothing_recorded(client, job_id)

    # A client still sending a body far over the limit gets the answer too.
    huge = too_big * 8
    assert_error(client.send_chunk(job_id, 0, 2, huge), 413, detail)
    assert_nothing_recorded(client, job_id)

    fits = too_big[:chunk]
    assert client.send_chunk(job_id, 0, 2, fits).json()["message"] == STORED


def test_content_length_over_the_limit_is_413_before_the_body(
    small_server: Server, chunk: int, chunks: list[bytes]
) -> None:
    client = small_server.client()
    job_id = client.new_job()
    content_type, _ = form_body([*fields(0, 2, chunks[0]), ("file", chunks[0])])
    sock = open_raw(
        small_server,
        f"/api/job/{job_id}/upload-data",
        {
            "Authorization": client.http.headers["Authorization"],
            "Content-Type": content_type,
            "Content-Length": str(100 * chunk),
        },
    )
    with sock:
        sock.settimeout(10)
        status, body = read_answer(sock)
    assert (status, body["detail"]) == (
        413,
        f"The chunk is larger than the limit of {chunk} bytes.",
    )
    assert_nothing_recorded(client, job_id)


def test_file_over_the_limit_is_413(small_server: Server, chunk: int, chunks: list[bytes]) -> None:
    client = small_server.client()
    job_id = client.new_job()
    before = storage_holds(small_server).uploads
    detail = f"The file is larger than the limit of {2 * chunk} bytes."
    answer = client.send_chunk(job_id, 0, 3, chunks[0], file_size=2 * chunk + 1)
    assert_error(answer, 413, detail)
    answer = client.send_chunk(job_id, 0, 3, chunks[0], chunk_size=chunk)
    assert_error(answer, 413, detail)
    assert_nothing_recorded(client, job_id)
    assert storage_holds(small_server).uploads == before


# --- 422 --------------------------------------------------------------------------------

# Stands for the module's chunk 0 in the parameters below: a whole chunk of the
# deployment, so that on S3 it is not also too small a part.
GOOD = b"<chunk 0 of the module's file>"
NOT_CSV = "This does not look like a CSV file: "


def with_chunk(body: bytes, chunks: list[bytes]) -> bytes:
    return body.replace(GOOD, chunks[0])


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
def test_missing_or_malformed_field_is_422(
    client: Client, chunks: list[bytes], parts: list[Part], detail: str
) -> None:
    job_id = client.new_job()
    sent = [(k, with_chunk(v, chunks) if isinstance(v, bytes) else v) for k, v in parts]
    assert_error(post_form(client, job_id, sent), 422, detail)
    assert_nothing_recorded(client, job_id)


@pytest.mark.parametrize(
    ("index", "bad", "detail"),
    [
        # Each made from the module's chunk 0 (`good`), as long as a chunk or longer.
        (1, lambda good: b"", "The chunk is empty."),
        (0, lambda good: b"", "The chunk is empty."),
        (
            0,
            lambda good: b"id,name\n1,a\x00b\n" + good,
            NOT_CSV + "it contains NUL bytes, so it is binary, not text",
        ),
        (
            0,
            lambda good: good[:1000] + b"\x00" + good[1000:],
            NOT_CSV + "it contains NUL bytes, so it is binary, not text",
        ),
        # Stored, not compressed: as long as the chunk, with gzip's header.
        (0, lambda good: gzip.compress(good, 0), NOT_CSV + "it is gzip-compressed"),
        (
            0,
            lambda good: b"PK\x03\x04" + good,
            NOT_CSV + "it is a ZIP archive (an .xlsx workbook is one)",
        ),
        (
            0,
            lambda good: b"\n" + good,
            NOT_CSV + "the first line, where the header belongs, is empty",
        ),
        (
            0,
            lambda good: b"  \r\n" + good,
            NOT_CSV + "the first line, where the header belongs, is empty",
        ),
        (
            0,
            lambda good: b"\x01\x02\x03\xff\xfe" * 100 + b"\n" + good,
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
def test_bad_chunk_bytes_are_422(
    client: Client, chunks: list[bytes], index: int, bad: Callable[[bytes], bytes], detail: str
) -> None:
    job_id = client.new_job()
    answer = client.send_chunk(job_id, index, len(chunks), bad(chunks[0]))
    assert_error(answer, 422, detail)
    assert_nothing_recorded(client, job_id)


def test_checksum_mismatch_is_422(
    server: Server, client: Client, deployment: Deployment, chunks: list[bytes]
) -> None:
    total = len(chunks)
    job_id = client.new_job()
    claimed = sha256(chunks[1])
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        data={**chunk_fields(0, total), "chunk_sha256": claimed.upper()},
        files={"file": ("a.csv", chunks[0])},
    )
    assert_error(
        answer,
        422,
        f"The chunk's SHA-256 is {sha256(chunks[0])}, not the chunk_sha256 sent ({claimed}).",
    )
    assert_nothing_recorded(client, job_id)
    if deployment.s3:
        # Every byte of the chunk went to the store as it came, but the last one is held
        # back until the chunk passes its checks: the part never ended, the store kept none.
        key = f" jobs/{job_id}/input.csv"
        held = [n for upload, n in storage_holds(server).uploads.items() if upload.endswith(key)]
        assert held == [0]
    # The checksum is optional, and a correct one in capitals is fine.
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        data={**chunk_fields(0, total), "chunk_sha256": sha256(chunks[0]).upper()},
        files={"file": ("a.csv", chunks[0])},
    )
    assert answer.status_code == 200, answer.text
    answer = client.send_chunk(job_id, 1, total, chunks[1], checksum=False)
    assert answer.status_code == 200, answer.text
    assert recorded(client, job_id) == {0: sha256(chunks[0]), 1: sha256(chunks[1])}


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
    client: Client, chunks: list[bytes], content_type: str | None, body: bytes, detail: str | None
) -> None:
    job_id = client.new_job()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data", content=with_chunk(body, chunks), headers=headers
    )
    assert answer.status_code == 422, answer.text
    if detail is None:
        assert answer.json()["detail"].startswith(MALFORMED)
    else:
        assert answer.json()["detail"] == MALFORMED + detail
    assert_nothing_recorded(client, job_id)


def named_file_form(
    filename: str, fields: list[Part], data: bytes, *, file_first: bool
) -> tuple[str, bytes]:
    """A chunk's form whose file part carries `filename` as it is (httpx would escape it)."""
    boundary = "chute-names-boundary"
    file_part = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )
    field_parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    )
    parts = [file_part, field_parts] if file_first else [field_parts, file_part]
    return f"multipart/form-data; boundary={boundary}", b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("file_first", [False, True], ids=["fields-first", "file-first"])
@pytest.mark.parametrize(
    ("filename", "why"),
    [
        pytest.param(
            "a\x00b.csv", "must not hold control characters (character 2 is U+0000)", id="nul"
        ),
        pytest.param(
            "\x1b[2Jx.csv", "must not hold control characters (character 1 is U+001B)", id="esc"
        ),
        # A CR or LF would end the part's header line: the form itself is malformed then.
        pytest.param(
            "a\tb.csv", "must not hold control characters (character 2 is U+0009)", id="tab"
        ),
        pytest.param(
            "a\x7fb.csv", "must not hold control characters (character 2 is U+007F)", id="del"
        ),
        pytest.param(
            "report\u202evsc.exe",
            "must not hold control characters (character 7 is U+202E)",
            id="bidi-override",
        ),
        pytest.param("x" * 197 + ".csv", "must be at most 200 characters, not 201", id="201-chars"),
    ],
)
def test_file_name_with_control_characters_or_too_long_is_422(
    server: Server, client: Client, chunks: list[bytes], filename: str, why: str, file_first: bool
) -> None:
    """PostgreSQL refuses NUL in text: without the check such a name is a 500 there."""
    job_id = client.new_job()
    content_type, body = named_file_form(
        filename, fields(0, len(chunks), chunks[0]), chunks[0], file_first=file_first
    )
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data", content=body, headers={"Content-Type": content_type}
    )
    assert_error(answer, 422, f"the file part's filename {why}")
    assert_nothing_recorded(client, job_id)
    assert client.job(job_id)["status"] == "awaiting_upload"
    assert server.sql("SELECT count(*) FROM uploads WHERE job_id = :id", id=job_id) == [(0,)]
    # A name of 200 characters is taken.
    content_type, body = named_file_form(
        "x" * 196 + ".csv", fields(0, len(chunks), chunks[0]), chunks[0], file_first=file_first
    )
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data", content=body, headers={"Content-Type": content_type}
    )
    assert answer.status_code == 200, answer.text
    assert client.job(job_id)["upload"]["file_name"] == "x" * 196 + ".csv"


def test_refused_first_chunk_binds_no_sizes(
    server: Server, client: Client, chunk: int, data: bytes, chunks: list[bytes]
) -> None:
    """Bad input changes nothing: a refused first chunk fixes neither total_chunks nor the
    chunk size, so the right file may follow the wrong one whatever its sizes."""
    job_id = client.new_job()
    # A gzip file (stored, not compressed: long enough), in chunks of 1.5 times the right.
    wrong = gzip.compress(data + data, 0)
    wrong_size = chunk + chunk // 2
    answer = client.send_chunk(job_id, 0, 7, wrong[:wrong_size], chunk_size=wrong_size)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == NOT_CSV + "it is gzip-compressed"
    assert_nothing_recorded(client, job_id)
    # Not even the job's status moved: to a client, nothing happened.
    assert upload_status(client, job_id)["state"] == "empty"
    job = client.job(job_id)
    assert (job["status"], job["upload"]) == ("awaiting_upload", None)
    before = set(storage_holds(server).uploads)

    answers = upload_all(client, job_id, chunks)
    assert [a.status_code for a in answers] == [200] * len(chunks), [a.text for a in answers]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, data)
    # The storage the refused chunk opened is not left behind.
    assert set(storage_holds(server).uploads) <= before


# --- 429 --------------------------------------------------------------------------------


def test_too_many_uploads_at_once_is_429(make_server: ServerFactory, chunks: list[bytes]) -> None:
    total = len(chunks)
    server = make_server(CHUTE_MAX_UPLOADS_PER_USER="1")
    client = server.client()
    slow_job, job_id = client.new_job(), client.new_job()
    content_type, body = form_body([*fields(0, total, chunks[0]), ("file", chunks[0])])
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        release.wait(timeout=60)
        yield body[len(body) // 2 :]

    def probe() -> httpx.Response:
        # Refused as 422 when a slot is free, 429 when not: it never records anything.
        return client.send_chunk(job_id, 0, 0, chunks[0])

    with ThreadPoolExecutor(1) as pool:
        slow: Future[httpx.Response] = pool.submit(
            client.http.post,
            f"/api/job/{slow_job}/upload-data",
            content=slow_body(),
            # S3 storage needs the Content-Length (README): send it, on every deployment.
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        )
        try:
            deadline = time.monotonic() + 30
            while (answer := probe()).status_code != 429:
                assert answer.status_code == 422, answer.text
                # If the slow request has ended, its answer or error says why it holds no slot.
                ended = slow.done() and (slow.exception() or slow.result().text)
                assert time.monotonic() < deadline, f"the slow request never took its slot: {ended}"
                time.sleep(0.05)
            detail = "Too many uploads at once for this user; try again shortly."
            assert answer.json()["detail"] == detail
            refused = client.send_chunk(job_id, 0, total, chunks[0])
            assert_error(refused, 429, detail)
            assert refused.headers["retry-after"] == "2"
            assert_nothing_recorded(client, job_id)
            # Other users have their own slots.
            other = server.client()
            assert other.send_chunk(other.new_job(), 0, total, chunks[0]).status_code == 200
        finally:
            release.set()
        assert slow.result(timeout=60).status_code == 200
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
    assert recorded(client, job_id) == {0: sha256(chunks[0])}


# --- 507 --------------------------------------------------------------------------------


def test_storage_full_is_507_and_the_chunk_can_be_sent_later(
    make_server: ServerFactory, deployment: Deployment, data: bytes, chunks: list[bytes]
) -> None:
    if deployment.s3:
        pytest.skip(
            "local disk only: the free-space reserve (CHUTE_MIN_FREE_BYTES) is measured on "
            "local disk; an S3 store tells no free space, and SeaweedFS has no quota to fill"
        )
    total = len(chunks)
    server = make_server()
    client = server.client()
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
    token = client.http.headers["Authorization"]

    def restart(min_free: int) -> httpx.Client:
        server.stop()
        server.env["CHUTE_MIN_FREE_BYTES"] = str(min_free)
        server.start()
        return httpx.Client(base_url=server.url, headers={"Authorization": token}, timeout=60)

    with restart(10**18) as http:
        full = replace(client, http=http)
        answer = full.send_chunk(job_id, 1, total, chunks[1])
        detail = "The server's storage is full; the chunk was discarded, send it later."
        assert_error(answer, 507, detail)
        assert recorded(full, job_id) == {0: sha256(chunks[0])}
        # A chunk already stored needs no room: its re-send is still answered.
        assert full.send_chunk(job_id, 0, total, chunks[0]).status_code == 200

    with restart(0) as http:
        roomy = replace(client, http=http)
        answers = [roomy.send_chunk(job_id, i, total, c) for i, c in enumerate(chunks)]
        assert [a.status_code for a in answers] == [200] * total
        assert answers[-1].json()["message"] == COMPLETE
        assert_succeeded_with(roomy, job_id, data)
