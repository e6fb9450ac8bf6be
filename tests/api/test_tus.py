"""The tus 1.0 front door, spoken raw over HTTP against a real `chute serve` (DESIGN §6).

The clients we did not write (tus-js-client, Uppy, tuspy) are in tests/tus; here each
rule of the protocol, and each bad input, is sent by hand so its answer can be read.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import socket
import time

import httpx
import pytest

from tests.conftest import Client, Server, ServerFactory, storage_holds
from tests.factories import csv_bytes, csv_of_size, sha256

pytestmark = pytest.mark.deployments

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def create(client: Client, length: int, **pairs: str) -> httpx.Response:
    pairs = pairs or {"name": "tus job", "filename": "data.csv"}
    return client.http.post(
        "/api/tus/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(**pairs)},
    )


def created(client: Client, length: int, **pairs: str) -> tuple[str, int]:
    answer = create(client, length, **pairs)
    assert answer.status_code == 201, answer.text
    return answer.headers["Location"], int(answer.headers["Chute-Job-Id"])


def patch(client: Client, url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    return client.http.patch(
        url, content=data, headers={**PATCH, "Upload-Offset": str(offset), **headers}
    )


def head(client: Client, url: str) -> httpx.Response:
    return client.http.head(url, headers=TUS)


def checksum(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_an_upload_in_several_patches_runs_its_job_once(client: Client) -> None:
    data = csv_bytes(20_000)
    url, job_id = created(client, len(data))
    assert client.job(job_id)["status"] == "awaiting_upload"
    answer = head(client, url)
    assert answer.status_code == 200
    assert (answer.headers["Upload-Offset"], answer.headers["Upload-Length"]) == (
        "0",
        str(len(data)),
    )
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" in answer.headers
    cuts = [0, 1000, len(data) // 2, len(data)]
    for start, end in itertools.pairwise(cuts):
        answer = patch(client, url, start, data[start:end])
        assert answer.status_code == 204, answer.text
        assert answer.headers["Upload-Offset"] == str(end)
    job = client.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert job["result"]["rows"] == 20_000
    assert client.stored(job_id) == (len(data), sha256(data))
    assert job["attempts"] == 1
    # A client that missed the last answer sees the upload is done.
    answer = head(client, url)
    assert answer.headers["Upload-Offset"] == str(len(data))
    assert "Upload-Expires" not in answer.headers
    status = client.http.get(f"/api/job/{job_id}/upload-data").json()
    assert status["state"] == "complete" and status["protocol"] == "tus"
    assert [c["size"] for c in status["chunks"]] == [
        1000,
        len(data) // 2 - 1000,
        len(data) - len(data) // 2,
    ]


def test_a_patch_is_recorded_part_by_part(make_server: ServerFactory, chunk: int) -> None:
    """A PATCH longer than the part size is cut at multiples of it, each part recorded."""
    part = chunk
    server = make_server(CHUTE_CHUNK_SIZE=str(part))
    client = server.client()
    data = csv_of_size(3 * part + part // 3)
    url, job_id = created(client, len(data))
    assert patch(client, url, 0, data[:100]).status_code == 204
    answer = patch(client, url, 100, data[100:])
    assert answer.status_code == 204, answer.text
    status = client.http.get(f"/api/job/{job_id}/upload-data").json()
    assert [c["size"] for c in status["chunks"]] == [100, part - 100] + [part] * (
        (len(data) - part) // part
    ) + ([(len(data) - part) % part] if (len(data) - part) % part else [])
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_creation_with_upload_takes_the_first_bytes(client: Client) -> None:
    data = csv_bytes(3000)
    answer = client.http.post(
        "/api/tus/",
        content=data[:1000],
        headers={
            **PATCH,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(name="with upload"),
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Upload-Offset"] == "1000"
    url, job_id = answer.headers["Location"], int(answer.headers["Chute-Job-Id"])
    assert patch(client, url, 1000, data[1000:]).status_code == 204
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_an_existing_job_takes_a_tus_upload(client: Client) -> None:
    job_id = client.new_job("named first")
    data = csv_bytes(500)
    url, answered = created(client, len(data), job_id=str(job_id), filename="x.csv")
    assert answered == job_id
    assert patch(client, url, 0, data).status_code == 204
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"


def test_a_patch_at_another_offset_is_409_and_changes_nothing(client: Client) -> None:
    data = csv_bytes(2000)
    url, _ = created(client, len(data))
    assert patch(client, url, 0, data[:500]).status_code == 204
    for offset in (0, 499, 501):
        answer = patch(client, url, offset, data[offset : offset + 10])
        assert answer.status_code == 409, answer.text
        assert "resume from there" in answer.json()["detail"]
    assert head(client, url).headers["Upload-Offset"] == "500"


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_checksums_are_verified_and_a_mismatch_keeps_nothing(
    client: Client, algorithm: str
) -> None:
    data = csv_bytes(3000)
    url, job_id = created(client, len(data))
    answer = patch(
        client, url, 0, data[:1000], **{"Upload-Checksum": checksum(data[:1000], algorithm)}
    )
    assert answer.status_code == 204, answer.text
    wrong = checksum(data[1000:] + b"x", algorithm)
    answer = patch(client, url, 1000, data[1000:], **{"Upload-Checksum": wrong})
    assert answer.status_code == 460, answer.text
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert head(client, url).headers["Upload-Offset"] == "1000"
    assert client.job(job_id)["status"] == "uploading"
    answer = patch(
        client, url, 1000, data[1000:], **{"Upload-Checksum": checksum(data[1000:], algorithm)}
    )
    assert answer.status_code == 204, answer.text
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_delete_discards_the_upload(server: Server, client: Client) -> None:
    data = csv_bytes(2000)
    url, job_id = created(client, len(data))
    assert patch(client, url, 0, data[:1000]).status_code == 204
    answer = client.http.delete(url, headers=TUS)
    assert answer.status_code == 204, answer.text
    assert head(client, url).status_code == 404
    assert client.job(job_id)["status"] == "awaiting_upload"
    status = client.http.get(f"/api/job/{job_id}/upload-data").json()
    assert status["state"] == "empty"
    # The job takes a new upload.
    url, _ = created(client, len(data), job_id=str(job_id))
    assert patch(client, url, 0, data).status_code == 204
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"


def test_another_users_upload_is_404(server: Server, client: Client) -> None:
    url, _ = created(client, 100)
    other = server.client()
    for answer in (
        head(other, url),
        patch(other, url, 0, b"a,b\n"),
        other.http.delete(url, headers=TUS),
    ):
        assert answer.status_code == 404, answer.text
    assert create(other, 10, job_id=str(created(client, 10)[1])).status_code == 404
    assert head(client, url).headers["Upload-Offset"] == "0"


def test_a_job_sent_with_tus_refuses_chunks(client: Client) -> None:
    """One upload per job, whichever door: chunks for a tus upload are refused (409), and
    a tus creation for a job with chunks recorded too (decided in the README)."""
    data = csv_bytes(2000)
    url, job_id = created(client, len(data))
    assert patch(client, url, 0, data[:1000]).status_code == 204
    answer = client.send_chunk(job_id, 1, 2, data[1000:])
    assert answer.status_code == 409, answer.text
    assert "tus" in answer.json()["detail"]
    other = client.new_job("chunks first")
    # The last chunk, which may be small on any storage, arrives first.
    assert client.send_chunk(other, 1, 2, data[1000:]).status_code == 200
    answer = create(client, len(data), job_id=str(other))
    assert answer.status_code == 409, answer.text


def test_a_chunk_that_is_not_csv_is_refused_at_the_first_bytes(client: Client) -> None:
    url, job_id = created(client, 3000)
    answer = patch(client, url, 0, b"\x00\x01\x02" * 1000)
    assert answer.status_code == 422, answer.text
    assert "CSV" in answer.json()["detail"]
    assert head(client, url).headers["Upload-Offset"] == "0"
    assert client.job(job_id)["status"] == "awaiting_upload"


def _send_part_of_a_patch(
    server: Server,
    token: str,
    path: str,
    offset: int,
    length: int,
    sent: bytes,
    *,
    wait_for_answer: bool = False,
) -> bytes:
    """A PATCH announcing `length` bytes whose client sends `sent`, then vanishes (a FIN),
    or falls silent and reads what the server answers (`wait_for_answer`)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head_lines = (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
        )
        sock.sendall(head_lines.encode() + sent)
        if not wait_for_answer:
            time.sleep(0.5)
            return b""
        sock.settimeout(30)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_dropped_patch_keeps_the_parts_it_completed(
    make_server: ServerFactory, chunk: int
) -> None:
    part = chunk
    server = make_server(CHUTE_CHUNK_SIZE=str(part))
    client = server.client()
    data = csv_of_size(4 * part + 1000)
    assert len(data) > 4 * part
    url, job_id = created(client, len(data))
    token = client.http.headers["Authorization"].split()[1]
    path = "/" + url.split("/", 3)[3] if url.startswith("http") else url
    _send_part_of_a_patch(server, token, path, 0, len(data), data[: 2 * part + 100])
    deadline = time.monotonic() + 10
    while head(client, url).headers["Upload-Offset"] != str(2 * part):
        assert time.monotonic() < deadline, head(client, url).headers
        time.sleep(0.1)
    answer = patch(client, url, 2 * part, data[2 * part :])
    assert answer.status_code == 204, answer.text
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_a_silent_patch_is_cut_off_and_keeps_its_finished_parts(
    make_server: ServerFactory, chunk: int
) -> None:
    """A client that stops sending without closing (a laptop asleep) holds nothing for
    long: 408 after the idle timeout, the parts it finished recorded, the rest free."""
    part = chunk
    server = make_server(
        CHUTE_CHUNK_SIZE=str(part), CHUTE_BODY_IDLE_TIMEOUT="1", CHUTE_CHUNK_LOCK_TIMEOUT="2"
    )
    client = server.client()
    data = csv_of_size(3 * part + 1000)
    url, job_id = created(client, len(data))
    token = client.http.headers["Authorization"].split()[1]
    path = "/" + url.split("/", 3)[3] if url.startswith("http") else url
    answer = _send_part_of_a_patch(
        server, token, path, 0, len(data), data[: part + 100], wait_for_answer=True
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert head(client, url).headers["Upload-Offset"] == str(part)
    answer = patch(client, url, part, data[part:])
    assert answer.status_code == 204, answer.text
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_expired_uploads_are_removed(make_server: ServerFactory) -> None:
    server = make_server(CHUTE_UPLOAD_EXPIRY="1", CHUTE_SWEEP_INTERVAL="0.2")
    client = server.client()
    data = csv_bytes(1000)
    url, job_id = created(client, len(data))
    assert patch(client, url, 0, data[:500]).status_code == 204
    client.wait_for(job_id, "upload_expired", timeout=20)
    assert head(client, url).status_code == 404
    assert storage_holds(server).uploads == {}


def partial(client: Client, data: bytes) -> str:
    answer = client.http.post(
        "/api/tus/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
    )
    assert answer.status_code == 201, answer.text
    assert "Chute-Job-Id" not in answer.headers
    url = answer.headers["Location"]
    assert head(client, url).headers["Upload-Concat"] == "partial"
    assert patch(client, url, 0, data, **{"Upload-Concat": "partial"}).status_code == 204
    return url


def final(client: Client, urls: list[str], **pairs: str) -> httpx.Response:
    pairs = pairs or {"name": "joined", "filename": "joined.csv"}
    return client.http.post(
        "/api/tus/",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": metadata(**pairs),
        },
    )


def test_partial_uploads_are_joined_by_a_final_upload(server: Server, client: Client) -> None:
    data = csv_of_size(3 * server.chunk + 1234)
    cuts = [0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data)]
    before = client.http.get("/api/job").json()["total"]
    urls = [partial(client, data[a:b]) for a, b in itertools.pairwise(cuts)]
    assert client.http.get("/api/job").json()["total"] == before  # partials make no job
    answer = final(client, urls)
    assert answer.status_code == 201, answer.text
    job_id = int(answer.headers["Chute-Job-Id"])
    assert answer.headers["Upload-Offset"] == answer.headers["Upload-Length"] == str(len(data))
    answer = head(client, answer.headers["Location"])
    assert answer.headers["Upload-Offset"] == str(len(data))
    assert answer.headers["Upload-Concat"] == "final;" + " ".join(
        "/api/tus/" + url.rsplit("/", 1)[1] for url in urls
    )
    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "succeeded", job
    assert client.stored(job_id) == (len(data), sha256(data))
    assert job["attempts"] == 1
    # The partials are the final upload's now: gone as uploads of their own.
    assert all(head(client, url).status_code == 404 for url in urls)
    holding = storage_holds(server)
    assert not any(key.startswith("tus-partials/") for key in holding.files)


def test_a_final_upload_takes_only_finished_partials_of_its_user(
    server: Server, client: Client
) -> None:
    data = csv_bytes(2000)
    done = partial(client, data[:1000])
    answer = client.http.post(
        "/api/tus/",
        headers={**TUS, "Upload-Length": str(len(data) - 1000), "Upload-Concat": "partial"},
    )
    unfinished = answer.headers["Location"]
    assert final(client, [done, unfinished]).status_code == 409
    other = server.client()
    assert final(other, [done]).status_code == 404
    for urls in ([], [done, done], ["/api/tus/not-an-upload"]):
        answer = final(client, urls)
        assert answer.status_code == 400, answer.text
    answer = client.http.post(
        "/api/tus/",
        headers={**TUS, "Upload-Concat": "final;" + done, "Upload-Length": "1000",
                 "Upload-Metadata": metadata(name="x")},
    )  # fmt: skip
    assert answer.status_code == 400
    answer = client.http.post(
        "/api/tus/", headers={**TUS, "Upload-Concat": "sideways", "Upload-Length": "10"}
    )
    assert answer.status_code == 400
    # None of that took the finished partial: it still joins.
    assert patch(client, unfinished, 0, data[1000:]).status_code == 204
    answer = final(client, [done, unfinished])
    assert answer.status_code == 201, answer.text
    job_id = int(answer.headers["Chute-Job-Id"])
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))


def test_a_partial_upload_can_be_discarded(client: Client) -> None:
    url = partial(client, csv_bytes(100))
    assert client.http.delete(url, headers=TUS).status_code == 204
    assert head(client, url).status_code == 404
    assert final(client, [url]).status_code == 404


def test_a_final_upload_whose_file_is_not_csv_is_refused(client: Client) -> None:
    """The file's first bytes are checked however they came: here, in a partial upload
    that the final upload puts first."""
    binary = partial(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 500)
    text = partial(client, csv_bytes(10))
    before = client.http.get("/api/job").json()["total"]
    answer = final(client, [binary, text])
    assert answer.status_code == 422, answer.text
    assert "CSV" in answer.json()["detail"]
    assert client.http.get("/api/job").json()["total"] == before
    # Nothing was taken: the partials are still there, and join the other way round.
    assert head(client, binary).status_code == 200
    assert final(client, [text]).status_code == 201
