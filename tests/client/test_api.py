"""`chute.client.Client` against a real `chute serve`: jobs, uploads, resuming, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.client import ApiError, ChuteClientError, Client, Progress, RetryPolicy, UploadError
from tests.client_support import KiB, chunk_posts, held_chunks, stored_sha256, token_of
from tests.conftest import Server, ServerFactory, free_port, serving
from tests.factories import csv_bytes, split

CHUNK = 64 * KiB


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, telling clients to use 64 KiB chunks."""
    settings = {"CHUTE_CHUNK_SIZE": str(CHUNK), "CHUTE_MAX_CHUNK_BYTES": str(1024 * KiB)}
    with serving(tmp_path_factory.mktemp("client-api"), **settings) as server:
        yield server


def write_csv(tmp_path: Path, rows: int, seed: int = 0) -> tuple[Path, bytes]:
    data = csv_bytes(rows, seed)
    path = tmp_path / f"data-{seed}.csv"
    path.write_bytes(data)
    return path, data


def signed_in(server: Server) -> Client:
    return Client(server.url, token_of(server.client()))


def test_upload_in_parallel_stores_the_same_file(small_chunks: Server, tmp_path: Path) -> None:
    path, data = write_csv(tmp_path, 40_000)  # about 1 MiB: 17 chunks
    seen: list[Progress] = []
    user = small_chunks.client()
    with Client(small_chunks.url, token_of(user)) as chute:
        job = chute.create_job("parallel")
        summary = chute.upload(job.id, path, parallel=3, on_progress=seen.append)
        assert summary.total_chunks == len(split(data, CHUNK)) > 10
        assert (summary.sent_chunks, summary.held_chunks) == (summary.total_chunks, 0)
        assert summary.sent_bytes == len(data)
        done = chute.wait(job.id, timeout=30)
    assert done.status == "succeeded"
    digest = hashlib.sha256(data).hexdigest()
    assert stored_sha256(user, job.id) == digest
    assert done.result is not None
    assert (done.result["rows"], done.result["input"]["size"]) == (40_000, len(data))
    assert seen[-1].done_bytes == len(data)
    assert seen[-1].chunks_done == summary.total_chunks
    assert chunk_posts(small_chunks.log(), job.id) == summary.total_chunks


def test_upload_sends_only_the_chunks_the_server_lacks(
    small_chunks: Server, tmp_path: Path
) -> None:
    path, data = write_csv(tmp_path, 20_000, seed=1)
    chunks = split(data, CHUNK)
    user = small_chunks.client()
    job_id = user.new_job("resume")
    for index in (0, 2, 3):
        answer = user.send_chunk(job_id, index, len(chunks), chunks[index], chunk_size=CHUNK)
        assert answer.status_code == 200, answer.text
    with Client(small_chunks.url, token_of(user)) as chute:
        # The chunk size the server fixed for this upload wins over the one asked for.
        summary = chute.upload(job_id, path, parallel=2, chunk_size=2 * CHUNK)
    assert summary.chunk_size == CHUNK
    assert summary.held_chunks == 3
    assert summary.sent_chunks == len(chunks) - 3
    # Each chunk reached the server once: the three sent before, the rest by the client.
    assert chunk_posts(small_chunks.log(), job_id) == len(chunks)
    assert held_chunks(user, job_id) == set(range(len(chunks)))
    assert stored_sha256(user, job_id) == hashlib.sha256(data).hexdigest()


def test_the_completing_answer_is_known_by_its_complete_field(
    small_chunks: Server, tmp_path: Path
) -> None:
    """The last chunk's answer says `"complete": true`: the client believes it and asks
    for the upload's status only once, before sending (else again, to learn it is whole)."""
    path, _ = write_csv(tmp_path, 5_000, seed=4)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("complete field")
        summary = chute.upload(job.id, path, parallel=2)
    assert summary.sent_chunks == summary.total_chunks > 1
    status_reads = f'"GET /api/job/{job.id}/upload-data HTTP/1.1" 200'
    assert small_chunks.log().count(status_reads) == 1


def test_a_complete_upload_is_not_sent_again(small_chunks: Server, tmp_path: Path) -> None:
    path, _ = write_csv(tmp_path, 5_000, seed=2)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("twice")
        first = chute.upload(job.id, path)
        again = chute.upload(job.id, path)
    assert first.sent_chunks == first.total_chunks
    assert (again.sent_chunks, again.held_chunks) == (0, first.total_chunks)
    assert chunk_posts(small_chunks.log(), job.id) == first.total_chunks


def test_a_job_begun_with_other_bytes_is_refused(small_chunks: Server, tmp_path: Path) -> None:
    path, data = write_csv(tmp_path, 5_000, seed=3)
    other = bytearray(data)
    other[CHUNK + 10] ^= 1  # the same size, one byte different in chunk 1
    user = small_chunks.client()
    job_id = user.new_job("other file")
    chunks = split(bytes(other), CHUNK)
    assert user.send_chunk(job_id, 1, len(chunks), chunks[1], chunk_size=CHUNK).status_code == 200
    with Client(small_chunks.url, token_of(user)) as chute, pytest.raises(UploadError) as caught:
        chute.upload(job_id, path, parallel=1)
    assert "other bytes for chunk 1" in str(caught.value)
    # Chunk 0 may have gone out before chunk 1 was compared; nothing after it did.
    assert chunk_posts(small_chunks.log(), job_id) <= 2


def test_a_file_the_server_would_refuse_is_refused_before_sending(
    small_chunks: Server, tmp_path: Path
) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x00\x01\x02" * 50_000)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("binary")
        with pytest.raises(UploadError, match="NUL bytes"):
            chute.upload(job.id, path, parallel=3)
    assert chunk_posts(small_chunks.log(), job.id, None) == 0


def test_the_jobs_encoding_is_used_for_the_check_before_sending(
    small_chunks: Server, tmp_path: Path
) -> None:
    """UTF-16 text is full of NUL bytes: taken when the job says so, refused otherwise."""
    path = tmp_path / "utf16.csv"
    path.write_bytes("a,b\n1,2\n".encode("utf-16-le") * 1000)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("utf-16", params={"encoding": "utf-16-le"})
        chute.upload(job.id, path)
        assert chute.upload_status(job.id).state == "complete"
        other = chute.create_job("no encoding")
        with pytest.raises(UploadError, match="NUL bytes"):
            chute.upload(other.id, path)


def test_a_refused_chunk_is_not_sent_again(small_chunks: Server, tmp_path: Path) -> None:
    path, _ = write_csv(tmp_path, 10_000)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("cancelled")
        chute.cancel(job.id)
        with pytest.raises(ApiError) as caught:
            chute.upload(job.id, path, parallel=1)
    assert caught.value.status == 409
    assert "job" in caught.value.detail.lower()
    assert chunk_posts(small_chunks.log(), job.id, 409) == 1
    assert chunk_posts(small_chunks.log(), job.id) == 0


@pytest.mark.parametrize(
    ("chunk_size", "words"),
    [(2048 * KiB, "over the server's limit"), (1, "more than the server's limit")],
)
def test_chunk_sizes_the_server_cannot_take_fail_before_sending(
    small_chunks: Server, tmp_path: Path, chunk_size: int, words: str
) -> None:
    path, _ = write_csv(tmp_path, 30_000, seed=4)
    with signed_in(small_chunks) as chute:
        job = chute.create_job("too big")
        with pytest.raises(UploadError, match=words):
            chute.upload(job.id, path, chunk_size=chunk_size)
    assert chunk_posts(small_chunks.log(), job.id, None) == 0


def test_missing_and_empty_files_fail_plainly(small_chunks: Server, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with signed_in(small_chunks) as chute:
        job = chute.create_job("nothing")
        with pytest.raises(UploadError, match="no such file"):
            chute.upload(job.id, tmp_path / "missing.csv")
        with pytest.raises(UploadError, match="is empty"):
            chute.upload(job.id, tmp_path / "empty.csv")


def test_jobs_list_get_cancel_delete(small_chunks: Server) -> None:
    user = small_chunks.client()
    with Client.sign_in(small_chunks.url, user.username, "pw-for-tests") as chute:
        first = chute.create_job("first")
        second = chute.create_job("second", params={"delimiter": ";"})
        assert [job.id for job in chute.jobs()] == [second.id, first.id]
        assert chute.job(second.id).raw["params"] == {"delimiter": ";"}
        assert chute.cancel(first.id).status == "cancelled"
        assert chute.wait(first.id, timeout=5).status == "cancelled"
        chute.delete(second.id)
        with pytest.raises(ApiError) as caught:
            chute.job(second.id)
    assert (caught.value.status, caught.value.detail) == (404, "Job not found.")


def test_wrong_password_and_bad_token_raise_with_the_detail(small_chunks: Server) -> None:
    name = small_chunks.add_user()
    with pytest.raises(ApiError) as caught:
        Client.sign_in(small_chunks.url, name, "not the password")
    assert (caught.value.status, caught.value.detail) == (401, "Wrong user name or password.")
    with Client(small_chunks.url, "not-a-token") as chute, pytest.raises(ApiError) as caught:
        chute.jobs()
    assert caught.value.status == 401


def test_a_blocked_sign_in_is_reported_at_once_not_retried(make_server: ServerFactory) -> None:
    # A server of its own: five failures block this test's address for everyone.
    server = make_server()
    name = server.add_user()
    for _ in range(5):
        with pytest.raises(ApiError):
            Client.sign_in(server.url, name, "not the password")
    retries: list[str] = []
    with pytest.raises(ApiError) as caught:
        Client.sign_in(server.url, name, "not the password", on_retry=retries.append)
    assert caught.value.status == 429
    assert caught.value.detail == "Too many failed sign-ins; try again later."
    assert retries == []


def test_an_unreachable_server_is_retried_then_reported() -> None:
    chute = Client(f"http://127.0.0.1:{free_port()}", "t", retry=RetryPolicy(3, 0.01, 0.02))
    with chute, pytest.raises(ChuteClientError, match="cannot reach"):
        chute.jobs()


def test_429_answers_are_retried_until_every_chunk_is_in(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # One upload request at a time per user: with 3 in flight, the server answers 429.
    server = make_server(CHUTE_CHUNK_SIZE=str(CHUNK), CHUTE_MAX_UPLOADS_PER_USER="1")
    path, data = write_csv(tmp_path, 40_000, seed=5)
    user = server.client()
    policy = RetryPolicy(attempts=50, base=0.01, cap=0.05)
    with Client(server.url, token_of(user), retry=policy) as chute:
        job = chute.create_job("busy")
        summary = chute.upload(job.id, path, parallel=3)
    assert summary.sent_chunks == summary.total_chunks
    assert summary.retries == chunk_posts(server.log(), job.id, 429) > 0
    assert stored_sha256(user, job.id) == hashlib.sha256(data).hexdigest()


def test_507_answers_are_retried_then_reported(make_server: ServerFactory, tmp_path: Path) -> None:
    # The server keeps more free disk than any machine has: every chunk gets 507.
    server = make_server(CHUTE_CHUNK_SIZE=str(CHUNK), CHUTE_MIN_FREE_BYTES=str(2**60))
    path, _ = write_csv(tmp_path, 1_000, seed=6)
    user = server.client()
    with Client(server.url, token_of(user), retry=RetryPolicy(3, 0.01, 0.02)) as chute:
        job = chute.create_job("full")
        with pytest.raises(ChuteClientError, match="after 3 tries") as caught:
            chute.upload(job.id, path)
    assert "storage is full" in str(caught.value)
    assert chunk_posts(server.log(), job.id, 507) == 3


def test_result_parquet_and_events_of_a_profiled_file(small_chunks: Server, tmp_path: Path) -> None:
    path, _ = write_csv(tmp_path, 3_000, seed=7)
    updates: list[str] = []
    with signed_in(small_chunks) as chute:
        job = chute.create_job("profiled")
        with pytest.raises(ApiError) as early:
            chute.result(job.id)
        chute.upload(job.id, path)
        done = chute.wait(job.id, timeout=60, on_update=lambda j: updates.append(j.status))
        result = chute.result(job.id)
        parquet = chute.download_parquet(job.id, tmp_path / "out.parquet")
        replay = list(chute.events(job.id))  # an ended job: its final state, then the end
    assert early.value.status == 409
    assert done.status == updates[-1] == "succeeded"
    assert result == done.result
    assert result["rows"] == 3_000
    assert [c["name"] for c in result["columns"]] == ["id", "name", "amount"]
    assert parquet.read_bytes()[:4] == b"PAR1"
    assert parquet.stat().st_size == result["parquet"]["size"]
    assert not (tmp_path / "out.parquet.part").exists()
    assert [job.status for job in replay] == ["succeeded"]


def test_waiting_for_a_job_deleted_meanwhile_ends_with_404(small_chunks: Server) -> None:
    with signed_in(small_chunks) as chute:
        job = chute.create_job("deleted")
        first = next(chute.events(job.id))
        assert first.status == "awaiting_upload"
        chute.delete(job.id)
        with pytest.raises(ApiError) as caught:
            chute.wait(job.id, timeout=30)
    assert caught.value.status == 404


def test_waiting_has_a_deadline(small_chunks: Server) -> None:
    with signed_in(small_chunks) as chute:
        job = chute.create_job("never uploaded")
        with pytest.raises(ChuteClientError, match="has not ended after 1 s"):
            chute.wait(job.id, timeout=1)
