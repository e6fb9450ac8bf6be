"""A real `chute serve` on S3 storage (SeaweedFS): chunks as parts, the job, its result."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.test_upload import chunk_parts, form_body, post_form
from tests.conftest import Client, Server, serving
from tests.factories import csv_bytes, csv_of_size, sha256, split
from tests.s3_support import SeaweedFS

PART = 5 * 1024 * 1024  # SeaweedFS enforces S3's minimum for every part but the last
STORED = "Data chunk uploaded successfully"
COMPLETE = "Data uploaded successfully and job started"


# One bucket and one server for the module: each test has a user and jobs of its own, and
# checks that a request stored nothing by comparing the whole bucket before and after it.
@pytest.fixture(scope="module")
def s3_bucket(seaweedfs: SeaweedFS) -> Iterator[str]:
    bucket = seaweedfs.new_bucket()
    yield bucket
    seaweedfs.remove_bucket(bucket)


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS, s3_bucket: str
) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("chute-s3"), **seaweedfs.env(s3_bucket, "chute")) as srv:
        yield srv


Holding = tuple[list[str], list[tuple[str, int]]]


def bucket_holds(seaweedfs: SeaweedFS, bucket: str) -> Holding:
    """Every object of the bucket, and every part of its unfinished uploads that holds bytes."""
    return seaweedfs.keys(bucket), seaweedfs.stored_parts(bucket)


def test_chunks_in_parallel_become_the_file_and_the_job_runs(
    s3_server: Server, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    client = s3_server.client()
    data = csv_bytes(700_000)  # about 18 MB: three 5 MiB chunks and a shorter last one
    chunks = split(data, PART)
    total = len(chunks)
    assert total == 4
    job_id = client.new_job("on s3")
    # Chunk 0 first and alone, as clients send it; it fixes the chunk size.
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200

    def send(index: int) -> httpx.Response:
        if index == 2:  # the seed's order: the file before the fields, spooled first
            return post_form(client, job_id, chunk_parts(2, total, chunks[2], file_first=True))
        return client.send_chunk(job_id, index, total, chunks[index])

    # 3 and 1 at once, then 2 and 1 again (a re-send) at once, on separate connections.
    with ThreadPoolExecutor(2) as pool:
        first = list(pool.map(send, [3, 1]))
    assert [a.status_code for a in first] == [200, 200], [a.text for a in first]
    with ThreadPoolExecutor(2) as pool:
        second = list(pool.map(send, [2, 1]))
    assert [a.status_code for a in second] == [200, 200], [a.text for a in second]
    assert second[0].json()["message"] == COMPLETE
    assert second[1].json()["duplicate"] is True

    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "succeeded", job
    assert job["result"]["rows"] == 700_000
    assert client.stored(job_id) == (len(data), sha256(data))
    # The result streams from the store, and it is Parquet.
    answer = client.http.get(f"/api/job/{job_id}/result/data.parquet")
    assert answer.status_code == 200
    assert answer.content[:4] == b"PAR1" and answer.content[-4:] == b"PAR1"
    import pyarrow.parquet as pq

    assert pq.read_table(io.BytesIO(answer.content)).num_rows == 700_000
    keys = seaweedfs.keys(s3_bucket)
    assert f"chute/jobs/{job_id}/input.csv" in keys
    assert any(k.startswith(f"chute/jobs/{job_id}/") and k.endswith("/data.parquet") for k in keys)
    # The upload's parts became the file: no unfinished upload of the module holds any.
    assert seaweedfs.stored_parts(s3_bucket) == []

    # A re-send after completion answers as the completing chunk did, and starts nothing.
    again = client.send_chunk(job_id, 3, total, chunks[3])
    assert again.status_code == 200 and again.json()["message"] == COMPLETE

    # Deleting the job removes its files from the bucket.
    assert client.http.delete(f"/api/job/{job_id}").status_code in (200, 204)
    assert [k for k in seaweedfs.keys(s3_bucket) if k.startswith(f"chute/jobs/{job_id}/")] == []


def test_a_small_file_in_one_chunk_is_fine(s3_server: Server) -> None:
    client = s3_server.client()
    data = csv_bytes(1_000)
    job_id = client.new_job()
    answer = client.send_chunk(job_id, 0, 1, data)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == COMPLETE
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def assert_nothing_stored(
    seaweedfs: SeaweedFS, bucket: str, before: Holding, client: Client, job_id: int
) -> None:
    assert bucket_holds(seaweedfs, bucket) == before
    status = client.http.get(f"/api/job/{job_id}/upload-data").json()
    assert status["state"] == "empty" and status["chunks"] == []


def test_the_file_part_must_come_last(
    s3_server: Server, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    client = s3_server.client()
    data = csv_bytes(1_000)
    job_id = client.new_job()
    before = bucket_holds(seaweedfs, s3_bucket)

    # A field after the file: the Content-Length announced more bytes for the file than it
    # had, and S3 took that size before the bytes.
    parts = [*chunk_parts(0, 1, data), ("note", "after the file")]
    answer = post_form(client, job_id, parts)
    assert answer.status_code == 422, answer.text
    assert "needs each part's size before its bytes" in answer.json()["detail"]
    assert_nothing_stored(seaweedfs, s3_bucket, before, client, job_id)

    # No Content-Length (chunked transfer encoding): the file part's size cannot be known.
    def chunked(body: bytes) -> Iterator[bytes]:
        yield from split(body, 4096)

    content_type, body = form_body(chunk_parts(0, 1, data))
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        content=chunked(body),
        headers={"Content-Type": content_type},
    )
    assert answer.status_code == 422, answer.text
    assert "send a Content-Length" in answer.json()["detail"]
    assert_nothing_stored(seaweedfs, s3_bucket, before, client, job_id)

    # The same chunk, sent as clients send it, is taken.
    assert client.send_chunk(job_id, 0, 1, data).status_code == 200
    # Its job ends before the next test lists the bucket.
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"


def test_chunks_below_the_minimum_part_size_are_refused(
    s3_server: Server, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    client = s3_server.client()
    data = csv_bytes(100_000)
    chunks = split(data, 1024 * 1024)
    job_id = client.new_job()
    before = bucket_holds(seaweedfs, s3_bucket)
    answer = client.send_chunk(job_id, 0, len(chunks), chunks[0])
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (
        f"The part cannot be stored: parts of {1024 * 1024} bytes are too small for this "
        f"server's storage: every part but the last must have at least {PART} bytes."
    )
    # The last chunk may be small, but not when chunk_size says the others are too.
    answer = client.send_chunk(
        job_id, len(chunks) - 1, len(chunks), chunks[-1][:1000], chunk_size=1024
    )
    assert answer.status_code == 422, answer.text
    assert "too small" in answer.json()["detail"]
    # Spooled (file first), the same rule.
    answer = post_form(client, job_id, chunk_parts(0, len(chunks), chunks[0], file_first=True))
    assert answer.status_code == 422, answer.text
    assert_nothing_stored(seaweedfs, s3_bucket, before, client, job_id)
    # What the storage can take is what /api/config says.
    assert client.http.get("/api/config").json()["max_total_chunks"] == 10_000
    answer = client.send_chunk(job_id, 0, 10_001, chunks[0])
    assert answer.status_code == 422, answer.text
    assert "more than this server's storage takes in one file (10000)" in answer.json()["detail"]


def test_racing_sends_of_one_chunk_with_different_bytes_keep_the_recorded_ones(
    s3_server: Server, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    # Object stores replace a part whole, last writer winning: without the part's lease,
    # the slower request would overwrite the part after the first had recorded its
    # checksum, and the file would not be what the record says.
    client = s3_server.client()
    data = csv_bytes(300_000)
    chunks = split(data, PART)
    assert len(chunks) == 2
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, 2, chunks[0]).status_code == 200
    other = chunks[1].replace(b"\n", b"\r\n", 1)[: len(chunks[1])]  # same size, other bytes
    assert other != chunks[1]

    first_half_sent = threading.Event()

    def slow_body(body: bytes) -> Iterator[bytes]:
        yield body[: len(body) // 2]
        first_half_sent.set()
        time.sleep(1.5)  # the other request arrives meanwhile, and must wait
        yield body[len(body) // 2 :]

    def send_slowly() -> httpx.Response:
        content_type, body = form_body(chunk_parts(1, 2, chunks[1]))
        return client.http.post(
            f"/api/job/{job_id}/upload-data",
            content=slow_body(body),
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        )

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(send_slowly)
        assert first_half_sent.wait(30)
        time.sleep(0.2)
        with httpx.Client(base_url=s3_server.url, headers=client.http.headers, timeout=60) as own:
            rival = Client(own, client.username, client.data_dir, client.env)  # own connection
            conflicting = rival.send_chunk(job_id, 1, 2, other)
        answer = slow.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == COMPLETE
    assert conflicting.status_code == 409, conflicting.text
    assert client.wait_for(job_id, "succeeded", "failed", timeout=60)["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_a_body_that_does_not_end_as_predicted_is_answered_for_what_it_is(
    s3_server: Server, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    # The file part's size is predicted from the Content-Length, to be told to the store;
    # a form that does not end with the file gets the answer local disk gives it, not a
    # refusal for a size the chunk does not have.
    client = s3_server.client()
    job_id = client.new_job()
    before = bucket_holds(seaweedfs, s3_bucket)
    chunk = csv_of_size(PART)[:PART]
    malformed = "The request body is not valid multipart/form-data: the body ended before"
    # No closing boundary: under, at and over the least part size.
    for file in (chunk[:1000], chunk, chunk + chunk[:100]):
        content_type, body = form_body(chunk_parts(0, 3, file, checksum=False))
        unterminated = body[: body.rindex(b"\r\n--")]
        answer = client.http.post(
            f"/api/job/{job_id}/upload-data",
            content=unterminated,
            headers={"Content-Type": content_type},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith(malformed)
    # A small chunk with a field after it: the file is not the form's last part.
    answer = post_form(client, job_id, [*chunk_parts(0, 3, chunk[:1000]), ("note", "x")])
    assert answer.status_code == 422, answer.text
    assert "needs each part's size before its bytes" in answer.json()["detail"]
    # An empty chunk is empty, whatever the part rules; sent with the fields or before them.
    for file_first in (False, True):
        answer = post_form(client, job_id, chunk_parts(1, 3, b"", file_first=file_first))
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == "The chunk is empty."
    assert_nothing_stored(seaweedfs, s3_bucket, before, client, job_id)


def test_a_recorded_chunk_sent_again_smaller_is_a_conflict(s3_server: Server) -> None:
    # The part rules are about bytes sent to the store; a chunk already recorded sends
    # none, so other bytes at its index are 409 (DESIGN §2), whatever their size.
    client = s3_server.client()
    data = csv_of_size(PART + 1000)
    chunks = split(data, PART)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, 2, chunks[0]).status_code == 200
    for when in ("partial", "complete"):
        answer = client.send_chunk(job_id, 0, 2, chunks[0][:1000])
        assert answer.status_code == 409, (when, answer.text)
        assert answer.json()["detail"] == "Chunk 0 is already stored with different bytes."
        if when == "partial":
            assert client.send_chunk(job_id, 1, 2, chunks[1]).json()["message"] == COMPLETE
    assert client.wait_for(job_id, "succeeded", "failed", timeout=60)["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))
