"""The chunked upload contract (DESIGN §2): answers, ordering, parallel chunks, re-sends,
the status answer and discarding an upload, against a real `chute serve`.

The helpers at the top build request bodies by hand where httpx's encoder cannot
(the seed's part order, camelCase fields); the other upload test modules use them too.
Files are sized in the deployment's `chunk` (conftest): 64 KiB, or 5 MiB on S3.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Client, Deployment, Server, storage_holds
from tests.factories import csv_of_size, sha256, split

STORED = "Data chunk uploaded successfully"
COMPLETE = "Data uploaded successfully and job started"
# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments

# A form part: a field (str value) or the file part (bytes value, sent as data.csv).
Part = tuple[str, str | bytes]


def form_body(parts: Sequence[Part], boundary: str | None = None) -> tuple[str, bytes]:
    """A multipart/form-data body with the parts in the given order: (Content-Type, body)."""
    boundary = boundary or f"chute-test-{secrets.token_hex(8)}"
    body = bytearray()
    for name, value in parts:
        body += f"--{boundary}\r\n".encode()
        if isinstance(value, bytes):
            body += (
                f'Content-Disposition: form-data; name="{name}"; filename="data.csv"\r\n'
                "Content-Type: text/csv\r\n\r\n"
            ).encode()
            body += value
        else:
            body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def chunk_parts(
    index: int,
    total: int,
    data: bytes,
    *,
    file_first: bool = False,
    camel: bool = False,
    checksum: bool = True,
) -> list[Part]:
    names = ("chunkIndex", "totalChunks") if camel else ("chunk_index", "total_chunks")
    fields: list[Part] = [(names[0], str(index)), (names[1], str(total))]
    if checksum:
        fields.append(("chunk_sha256", sha256(data)))
    file: list[Part] = [("file", data)]
    return file + fields if file_first else fields + file


def post_form(client: Client, job_id: int, parts: Sequence[Part]) -> httpx.Response:
    content_type, body = form_body(parts)
    return client.http.post(
        f"/api/job/{job_id}/upload-data", content=body, headers={"Content-Type": content_type}
    )


def open_raw(server: Server, path: str, headers: dict[str, str]) -> socket.socket:
    """A POST whose headers are sent and whose body is left to the caller, byte by byte."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(head.encode() + b"\r\n")
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer on a raw connection."""
    answer = http.client.HTTPResponse(sock)
    try:
        answer.begin()
        body: dict[str, Any] = json.loads(answer.read() or b"{}")
        return answer.status, body
    finally:
        answer.close()


def upload_status(client: Client, job_id: int) -> dict[str, Any]:
    answer = client.http.get(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def recorded(client: Client, job_id: int) -> dict[int, str]:
    """Index -> sha256 of every chunk the server holds for the job."""
    return {c["index"]: c["sha256"] for c in upload_status(client, job_id)["chunks"]}


def new_uploads(server: Server, before: set[str]) -> dict[str, int]:
    """The storage's unfinished uploads not in `before`, with the bytes they hold."""
    return {k: v for k, v in storage_holds(server).uploads.items() if k not in before}


def attempts(server: Server, job_id: int) -> int:
    """How many times a worker claimed the job, read from the server's database."""
    rows = server.sql("SELECT attempts FROM jobs WHERE id = :id", id=job_id)
    assert len(rows) == 1
    return int(rows[0][0])


def upload_all(client: Client, job_id: int, chunks: Sequence[bytes]) -> list[httpx.Response]:
    return [client.send_chunk(job_id, i, len(chunks), c) for i, c in enumerate(chunks)]


def assert_succeeded_with(client: Client, job_id: int, data: bytes) -> dict[str, Any]:
    job = client.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert client.stored(job_id) == (len(data), sha256(data))
    assert job["result"]["input"] == {"size": len(data)}
    return job


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    """One user for the module's tests (each makes its own jobs)."""
    return server.client()


def test_answers_carry_the_seeds_three_fields(client: Client, chunk: int) -> None:
    data = csv_of_size(2 * chunk + chunk // 2)
    chunks = split(data, chunk)
    assert len(chunks) == 3
    job_id = client.new_job()
    answers = upload_all(client, job_id, chunks)
    for index, answer in enumerate(answers[:-1]):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["message"], body["data_chunk_index"], body["job_id"]) == (
            STORED,
            index,
            job_id,
        )
        # An unfinished upload's answers say until when it may be resumed.
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    last = answers[-1].json()
    assert last["expires_at"] is None
    assert (last["message"], last["data_chunk_index"], last["job_id"]) == (
        COMPLETE,
        len(chunks) - 1,
        job_id,
    )
    assert_succeeded_with(client, job_id, data)


@pytest.mark.parametrize(
    ("order", "send_chunk_size"),
    [
        ([3, 1, 4, 0, 2], True),
        ([3, 1, 4, 0, 2], False),
        ([2, 0, 1], False),  # the last chunk first, before the chunk size is known
        ([4, 3, 2, 1, 0], False),
    ],
)
def test_chunks_in_any_order_complete_on_the_last_arrival(
    client: Client, chunk: int, order: list[int], send_chunk_size: bool
) -> None:
    chunk_size = chunk
    data = csv_of_size((len(order) - 1) * chunk_size + chunk_size // 2)
    chunks = split(data, chunk_size)
    assert len(chunks) == len(order)
    job_id = client.new_job()
    extra: dict[str, Any] = {"chunk_size": chunk_size} if send_chunk_size else {}
    messages = []
    for index in order:
        answer = client.send_chunk(job_id, index, len(chunks), chunks[index], **extra)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data_chunk_index"] == index
        messages.append(answer.json()["message"])
    assert messages == [STORED] * (len(order) - 1) + [COMPLETE]
    assert_succeeded_with(client, job_id, data)


@pytest.mark.parametrize("send_chunk_size", [False, True])
def test_eight_chunks_at_once_give_one_completing_answer_and_one_run(
    server: Server, client: Client, chunk: int, send_chunk_size: bool
) -> None:
    chunk_size = chunk
    data = csv_of_size(7 * chunk_size + chunk_size // 2)
    chunks = split(data, chunk_size)
    assert len(chunks) == 8
    job_id = client.new_job()
    extra: dict[str, Any] = {"chunk_size": chunk_size} if send_chunk_size else {}
    start = threading.Barrier(8)

    def send(index: int) -> httpx.Response:
        start.wait(timeout=30)
        return client.send_chunk(job_id, index, 8, chunks[index], **extra)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    messages = [a.json()["message"] for a in answers]
    assert messages.count(COMPLETE) == 1, messages
    assert messages.count(STORED) == 7
    assert_succeeded_with(client, job_id, data)
    assert attempts(server, job_id) == 1
    assert upload_status(client, job_id)["state"] == "complete"


@pytest.mark.parametrize(
    ("file_first", "camel"),
    [(True, False), (False, True), (True, True)],
    ids=["seed-order", "camel-case", "seed-order-camel-case"],
)
def test_seed_form_shapes_work(client: Client, chunk: int, file_first: bool, camel: bool) -> None:
    data = csv_of_size(2 * chunk + chunk // 4)
    chunks = split(data, chunk)
    job_id = client.new_job()
    messages = []
    for index, part in enumerate(chunks):
        answer = post_form(
            client,
            job_id,
            chunk_parts(index, len(chunks), part, file_first=file_first, camel=camel),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data_chunk_index"] == index
        messages.append(answer.json()["message"])
    assert messages == [STORED] * (len(chunks) - 1) + [COMPLETE]
    status = upload_status(client, job_id)
    assert [c["sha256"] for c in status["chunks"]] == [sha256(c) for c in chunks]
    assert_succeeded_with(client, job_id, data)


def test_resending_a_stored_chunk_changes_nothing_and_other_bytes_conflict(
    client: Client, chunk: int
) -> None:
    data = csv_of_size(2 * chunk + chunk // 4)
    chunks = split(data, chunk)
    total = len(chunks)
    job_id = client.new_job()
    for index in (0, 1):
        assert client.send_chunk(job_id, index, total, chunks[index]).status_code == 200
    before = upload_status(client, job_id)

    again = client.send_chunk(job_id, 1, total, chunks[1])
    assert again.status_code == 200, again.text
    assert again.json()["message"] == STORED
    assert again.json()["data_chunk_index"] == 1
    assert upload_status(client, job_id) == before

    other = bytes(reversed(chunks[1]))
    conflict = client.send_chunk(job_id, 1, total, other)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["detail"] == "Chunk 1 is already stored with different bytes."
    assert upload_status(client, job_id) == before

    for index in range(2, total):
        assert client.send_chunk(job_id, index, total, chunks[index]).status_code == 200
    # The refused bytes were never written over the stored ones.
    assert_succeeded_with(client, job_id, data)


def test_resending_after_completion_answers_complete_and_never_queues_again(
    server: Server, client: Client, chunk: int
) -> None:
    data = csv_of_size(chunk + chunk // 2)
    chunks = split(data, chunk)
    total = len(chunks)
    job_id = client.new_job()
    upload_all(client, job_id, chunks)
    done = assert_succeeded_with(client, job_id, data)
    status = upload_status(client, job_id)

    for index, part in enumerate(chunks):
        answer = client.send_chunk(job_id, index, total, part)
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"] == COMPLETE
        assert answer.json()["data_chunk_index"] == index
    conflict = client.send_chunk(job_id, 0, total, chunks[0].replace(b"name", b"NAME"))
    assert conflict.status_code == 409, conflict.text
    assert "already stored with different bytes" in conflict.json()["detail"]

    after = client.job(job_id)
    assert after["status"] == "succeeded"
    for key in ("started_at", "finished_at", "result", "updated_at"):
        assert after[key] == done[key], key
    assert attempts(server, job_id) == 1
    assert upload_status(client, job_id) == status


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_upload_status_before_during_and_after_completion(client: Client, chunk: int) -> None:
    data = csv_of_size(2 * chunk + chunk // 4)
    chunks = split(data, chunk)
    total = len(chunks)
    job_id = client.new_job()

    empty = upload_status(client, job_id)
    assert empty["job_id"] == job_id
    assert empty["state"] == "empty"
    assert empty["chunks"] == []
    assert empty["bytes_received"] == 0

    client.send_chunk(job_id, 1, total, chunks[1], chunk_size=chunk)
    sent_at = datetime.now(UTC)
    partial = upload_status(client, job_id)
    assert partial["state"] == "partial"
    assert partial["total_chunks"] == total
    assert partial["chunk_size"] == chunk
    assert partial["bytes_received"] == len(chunks[1])
    assert partial["chunks"] == [{"index": 1, "size": len(chunks[1]), "sha256": sha256(chunks[1])}]
    expires = _parse_time(partial["expires_at"])
    assert abs(expires - (sent_at + timedelta(days=1))) < timedelta(minutes=5)
    job_upload = client.job(job_id)["upload"]
    assert job_upload["expires_at"] is not None

    upload_all(client, job_id, chunks)
    complete = upload_status(client, job_id)
    assert complete["state"] == "complete"
    assert complete["total_chunks"] == total
    assert complete["bytes_received"] == len(data)
    assert complete["chunks"] == [
        {"index": i, "size": len(c), "sha256": sha256(c)} for i, c in enumerate(chunks)
    ]
    assert complete.get("expires_at") is None
    assert_succeeded_with(client, job_id, data)
    assert client.job(job_id)["upload"]["expires_at"] is None
    assert upload_status(client, job_id)["chunks"] == complete["chunks"]


def test_discarding_an_unfinished_upload_removes_its_bytes(
    server: Server, client: Client, chunk: int
) -> None:
    data = csv_of_size(2 * chunk + chunk // 4)
    chunks = split(data, chunk)
    job_id = client.new_job()
    before = set(storage_holds(server).uploads)
    for index in (0, 1):
        assert client.send_chunk(job_id, index, len(chunks), chunks[index]).status_code == 200
    ((upload, held),) = new_uploads(server, before).items()
    assert held >= 2 * chunk

    answer = client.http.delete(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 204, answer.text
    # Local disk: the upload's directory is gone. S3: the multipart upload is aborted.
    assert upload not in storage_holds(server).uploads
    assert client.job(job_id)["status"] == "awaiting_upload"
    status = upload_status(client, job_id)
    assert status["chunks"] == []
    assert status["bytes_received"] == 0
    assert status["state"] == "empty"

    # A fresh upload may start over, with another total.
    other = csv_of_size(chunk + chunk // 4, seed=1)
    other_chunks = split(other, chunk)
    assert len(other_chunks) != len(chunks)
    answers = upload_all(client, job_id, other_chunks)
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, other)


def test_discarding_a_complete_upload_is_refused(client: Client, chunk: int) -> None:
    data = csv_of_size(chunk + chunk // 4)
    chunks = split(data, chunk)
    job_id = client.new_job()
    upload_all(client, job_id, chunks)
    assert_succeeded_with(client, job_id, data)
    status = upload_status(client, job_id)

    answer = client.http.delete(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == "The upload is complete and can no longer be discarded."
    assert upload_status(client, job_id) == status
    assert client.job(job_id)["status"] == "succeeded"


def test_chunks_go_in_place_and_completion_copies_nothing(
    server: Server, client: Client, deployment: Deployment, chunk: int
) -> None:
    data = csv_of_size(2 * chunk + chunk // 4)
    chunks = split(data, chunk)
    total = len(chunks)
    job_id = client.new_job()
    key = f"jobs/{job_id}/input.csv"
    before = set(storage_holds(server).uploads)
    for index in range(total - 1):
        answer = client.send_chunk(job_id, index, total, chunks[index], chunk_size=chunk)
        assert answer.status_code == 200, answer.text
    ((upload, held),) = new_uploads(server, before).items()
    if deployment.s3:
        # One multipart upload, begun on the file's own key, a part per chunk: completion
        # assembles the parts where they are, with no copy to another key.
        assert upload.split(" ")[1] == key
        assert held == (total - 1) * chunk
    else:
        # One file for the whole upload: no part kept aside, no copy per chunk.
        directory = server.data_dir / "files" / "uploads" / upload
        assert sorted(p.name for p in directory.iterdir()) == ["data", "locks"]
        inode = os.stat(directory / "data").st_ino
    assert key not in storage_holds(server).files

    client.send_chunk(job_id, total - 1, total, chunks[-1], chunk_size=chunk)
    assert_succeeded_with(client, job_id, data)
    after = storage_holds(server)
    assert upload not in after.uploads
    assert key in after.files
    if not deployment.s3:
        # Completion is a rename.
        assert os.stat(server.data_dir / "files" / "objects" / key).st_ino == inode
