"""Per-user storage quotas (DESIGN §8) against a real `chute serve`, on both deployments.

The module's server has CHUTE_USER_QUOTA_BYTES of four of the deployment's chunks and no
job worker, so no job's outputs change what a user holds while a test counts; each test
has users of its own. What outputs count is tested on a server with its worker.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from chute.client import ChuteClientError, RetryPolicy
from chute.client import Client as ChuteClient
from tests.client_support import chunk_posts, token_of
from tests.conftest import (
    Client,
    Deployment,
    Server,
    ServerFactory,
    deployment_env,
    storage_holds,
)
from tests.factories import csv_of_size, split

pytestmark = pytest.mark.deployments

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
QUOTA_WORDS = "would pass your storage quota"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, deployment: Deployment) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("chute-quotas")
    with deployment_env(deployment) as extra:
        env = {
            **os.environ,
            "CHUTE_DATA_DIR": str(base / "data"),
            "CHUTE_MIN_FREE_BYTES": "0",
            **extra,
            "CHUTE_USER_QUOTA_BYTES": str(4 * deployment.chunk),
        }
        srv = Server(data_dir=base / "data", env=env, args=["--no-worker"], chunk=deployment.chunk)
        try:
            srv.start()
            yield srv
        finally:
            srv.close_clients()
            srv.stop(kill=True)


@pytest.fixture
def quota(deployment: Deployment) -> int:
    return 4 * deployment.chunk


def me(client: Client) -> dict[str, Any]:
    answer = client.http.get("/api/auth/me")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def exact_csv(size: int, seed: int = 0) -> bytes:
    """A CSV file's start of exactly `size` bytes (no worker reads it whole here)."""
    return csv_of_size(size, seed)[:size]


def user_id(server: Server, client: Client) -> int:
    return int(server.sql("SELECT id FROM users WHERE username = :n", n=client.username)[0][0])


def admin(server: Server) -> Client:
    """A new user made an admin in the database (the user commands are tested elsewhere)."""
    client = server.client()
    engine = create_engine(server.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE users SET is_admin = :yes WHERE username = :n"),
                {"yes": True, "n": client.username},
            )
    finally:
        engine.dispose()
    return client


def storage_id(server: Server, job_id: int) -> str | None:
    rows = server.sql("SELECT storage_id FROM uploads WHERE job_id = :id", id=job_id)
    return str(rows[0][0]) if rows else None


def holds_nothing_for(server: Server, client: Client, job_id: int) -> None:
    """No byte of the job's upload is stored, and the server says it holds none."""
    answer = client.http.get(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert (status["state"], status["bytes_received"], status["chunks"]) == ("empty", 0, [])
    sid = storage_id(server, job_id)
    if sid is not None:
        assert storage_holds(server).uploads.get(sid, 0) == 0


def refused_for_quota(answer: httpx.Response) -> None:
    assert answer.status_code == 507, answer.text
    detail = answer.json()["detail"]
    assert QUOTA_WORDS in detail and "delete jobs" in detail, detail
    assert "storage is full" not in detail  # not the disk's 507
    assert answer.headers.get("Chute-Quota") == "exceeded"


def send_all(client: Client, job_id: int, data: bytes, chunk: int, **extra: object) -> None:
    chunks = split(data, chunk)
    for index, part in enumerate(chunks):
        answer = client.send_chunk(job_id, index, len(chunks), part, **extra)
        assert answer.status_code == 200, answer.text


def test_a_chunk_past_the_quota_is_refused_first_and_fits_once_a_job_is_deleted(
    server: Server, quota: int
) -> None:
    client = server.client()
    chunk = server.chunk
    first = client.new_job()
    data1 = exact_csv(2 * chunk + 100, seed=1)
    send_all(client, first, data1, chunk, file_size=len(data1))
    assert me(client)["quota_bytes"] == quota
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (len(data1), 0)

    # A file of 2 chunks and a bit more cannot fit beside the first: its first chunk is
    # refused, by its file_size, before any byte is stored.
    second = client.new_job()
    data2 = exact_csv(2 * chunk + 100, seed=2)
    parts = split(data2, chunk)
    answer = client.send_chunk(second, 0, len(parts), parts[0], file_size=len(data2))
    refused_for_quota(answer)
    holds_nothing_for(server, client, second)
    # Without file_size, the chunk size alone says the file has at least 2 whole chunks.
    answer = client.send_chunk(second, 0, len(parts), parts[0], chunk_size=chunk)
    refused_for_quota(answer)
    answer = client.send_chunk(second, 0, len(parts), parts[0])  # the seed's fields only
    refused_for_quota(answer)
    holds_nothing_for(server, client, second)
    assert me(client)["used_bytes"] == len(data1)

    assert client.http.delete(f"/api/job/{first}").status_code == 204
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (0, 0)
    send_all(client, second, data2, chunk, file_size=len(data2))
    assert client.job(second)["status"] == "queued"
    assert me(client)["used_bytes"] == len(data2)


def test_an_upload_reserves_its_file_and_a_resent_chunk_counts_once(
    server: Server, quota: int
) -> None:
    client = server.client()
    chunk = server.chunk
    job_id = client.new_job()
    data = exact_csv(quota)  # the whole quota, to the byte
    parts = split(data, chunk)
    assert len(parts) == 4
    answer = client.send_chunk(job_id, 0, 4, parts[0], file_size=len(data))
    assert answer.status_code == 200, answer.text
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (chunk, 3 * chunk)
    again = client.send_chunk(job_id, 0, 4, parts[0], file_size=len(data))
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (chunk, 3 * chunk)

    # The rest of the file is promised to this upload: another job's byte does not fit.
    other = client.new_job()
    refused_for_quota(client.send_chunk(other, 0, 1, b"id\n1\n"))
    holds_nothing_for(server, client, other)

    for index in (3, 1, 2):  # in any order, all within the reservation
        answer = client.send_chunk(job_id, index, 4, parts[index], file_size=len(data))
        assert answer.status_code == 200, answer.text
    assert answer.json()["complete"] is True
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (quota, 0)
    # At the quota, to the byte: a re-send of a stored chunk still answers as before.
    again = client.send_chunk(job_id, 2, 4, parts[2], file_size=len(data))
    assert again.status_code == 200 and again.json()["complete"] is True, again.text
    # So does one sent as the seed's sample sends it, the file part before the fields.
    again = client.http.post(
        f"/api/job/{job_id}/upload-data",
        files=[
            ("file", ("data.csv", parts[1], "text/csv")),
            ("chunk_index", (None, "1")),
            ("total_chunks", (None, "4")),
        ],
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    assert me(client)["used_bytes"] == quota
    assert f"user {user_id(server, client)}: refused by the storage quota" in server.log()


def test_parallel_chunks_never_pass_the_quota(server: Server, quota: int) -> None:
    """Eight single-chunk uploads of a bit more than a quarter of the quota, all at once:
    exactly three fit, whichever they are, and the others store nothing."""
    client = server.client()
    size = quota // 4 + 1000
    data = [exact_csv(size, seed=i) for i in range(8)]
    jobs = [client.new_job() for _ in data]

    def send(i: int) -> httpx.Response:
        return client.send_chunk(jobs[i], 0, 1, data[i])

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, range(len(jobs))))
    taken = [job for job, a in zip(jobs, answers, strict=True) if a.status_code == 200]
    assert len(taken) == 3, [a.status_code for a in answers]
    for job, answer in zip(jobs, answers, strict=True):
        if job not in taken:
            refused_for_quota(answer)
            holds_nothing_for(server, client, job)
    assert me(client)["used_bytes"] == 3 * size <= quota


def test_a_file_part_sent_before_the_fields_is_not_kept_past_the_quota(
    server: Server, quota: int
) -> None:
    client = server.client()
    job_id = client.new_job()
    data = exact_csv(quota + 1)
    # The seed's sample: the file part first, so its size is known only from the body.
    answer = client.http.post(
        f"/api/job/{job_id}/upload-data",
        files=[
            ("file", ("data.csv", data, "text/csv")),
            ("chunk_index", (None, "0")),
            ("total_chunks", (None, "1")),
        ],
    )
    refused_for_quota(answer)
    holds_nothing_for(server, client, job_id)
    assert not list((server.data_dir / "tmp").glob("spool-*"))


def tus_create(client: Client, length: int, body: bytes = b"", **headers: str) -> httpx.Response:
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"name": "tus job", "filename": "data.csv"}.items()
    )
    extra = {"Content-Type": PATCH["Content-Type"]} if body else {}
    return client.http.post(
        "/api/tus/",
        content=body,
        headers={**TUS, **extra, "Upload-Length": str(length), "Upload-Metadata": meta, **headers},
    )


def test_tus_creations_reserve_their_length(server: Server, quota: int) -> None:
    client = server.client()
    data = exact_csv(3 * server.chunk)
    created = tus_create(client, len(data))
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (0, len(data))

    jobs_before = client.http.get("/api/job").json()["total"]
    refused_for_quota(tus_create(client, quota - len(data) + 1))
    # creation-with-upload: refused before its body is read
    refused_for_quota(tus_create(client, server.chunk + 1, body=data[: server.chunk]))
    refused_for_quota(tus_create(client, server.chunk + 1, **{"Upload-Concat": "partial"}))
    assert client.http.get("/api/job").json()["total"] == jobs_before  # no job left behind
    assert me(client)["reserved_bytes"] == len(data)

    # What fits beside it still does: a partial upload of the rest, to the byte.
    partial = tus_create(client, quota - len(data), **{"Upload-Concat": "partial"})
    assert partial.status_code == 201, partial.text
    assert client.http.delete(partial.headers["Location"], headers=TUS).status_code == 204

    # The upload's PATCHes are within what it reserved, even once the quota is lowered:
    # an upload once accepted is not stopped halfway.
    boss = admin(server)
    lowered = boss.http.put(f"/api/users/{user_id(server, client)}/quota", json={"quota_bytes": 1})
    assert lowered.status_code == 200, lowered.text
    half = len(data) // 2
    for start, end in ((0, half), (half, len(data))):
        answer = client.http.patch(
            url, content=data[start:end], headers={**PATCH, "Upload-Offset": str(start)}
        )
        assert answer.status_code == 204, answer.text
    assert (me(client)["used_bytes"], me(client)["reserved_bytes"]) == (len(data), 0)
    refused_for_quota(tus_create(client, 1))


def test_admins_set_a_users_quota(server: Server, quota: int) -> None:
    client = server.client()
    boss = admin(server)
    uid = user_id(server, client)
    path = f"/api/users/{uid}/quota"
    data = exact_csv(quota + 1)

    assert client.http.put(path, json={"quota_bytes": 10**12}).status_code == 403
    assert client.http.get(path).status_code == 403
    for bad in (-1, "lots", 2**63, 1.5):
        answer = boss.http.put(path, json={"quota_bytes": bad})
        assert answer.status_code == 422, (bad, answer.text)
    assert boss.http.put(path, json={}).status_code == 422
    assert boss.http.put(path, json={"quota_bytes": 5, "more": 1}).status_code == 422
    for unknown in (999_999, 2**40, 0, -3):
        answer = boss.http.put(f"/api/users/{unknown}/quota", json={"quota_bytes": 5})
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"] == "User not found."
        assert boss.http.get(f"/api/users/{unknown}/quota").status_code == 404

    job_id = client.new_job()
    refused_for_quota(client.send_chunk(job_id, 0, 1, data))
    raised = boss.http.put(path, json={"quota_bytes": len(data)})
    assert raised.status_code == 200, raised.text
    assert raised.json() == {
        "user_id": uid,
        "username": client.username,
        "override_bytes": len(data),
        "quota_bytes": len(data),
        "used_bytes": 0,
        "reserved_bytes": 0,
    }
    assert me(client)["quota_bytes"] == len(data)
    assert client.send_chunk(job_id, 0, 1, data).status_code == 200
    assert boss.http.get(path).json()["used_bytes"] == len(data)

    # 0: no quota for this user; null: the deployment's default again.
    assert boss.http.put(path, json={"quota_bytes": 0}).json()["quota_bytes"] is None
    assert me(client)["quota_bytes"] is None
    back = boss.http.put(path, json={"quota_bytes": None}).json()
    assert (back["override_bytes"], back["quota_bytes"]) == (None, quota)
    refused_for_quota(client.send_chunk(client.new_job(), 0, 1, b"id\n1\n"))


def test_the_command_sets_and_shows_a_quota(server: Server, quota: int) -> None:
    client = server.client()
    result = server.cli("user", "quota", client.username, "1MiB")
    assert result.returncode == 0, result.stderr
    assert "quota 1048576 bytes, set for this user; uses 0 bytes" in result.stdout
    assert me(client)["quota_bytes"] == 1024 * 1024
    result = server.cli("user", "quota", client.username, "default")
    assert result.returncode == 0, result.stderr
    assert me(client)["quota_bytes"] == quota
    shown = server.cli("user", "quota", client.username)
    assert f"quota {quota} bytes, the default" in shown.stdout
    assert server.cli("user", "quota", "nobody-here", "5").returncode == 1
    bad = server.cli("user", "quota", client.username, "-5")
    assert bad.returncode == 2 and "not a size" in bad.stderr


def test_outputs_count_and_deleting_a_job_frees_its_bytes(make_server: ServerFactory) -> None:
    srv = make_server(CHUTE_USER_QUOTA_BYTES=str(10**9))
    client = srv.client()
    data = csv_of_size(3 * srv.chunk)
    job_id = client.new_job()
    client.upload(job_id, data)
    assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    outputs = srv.sql("SELECT outputs FROM jobs WHERE id = :id", id=job_id)[0][0]
    files = outputs if isinstance(outputs, dict) else json.loads(outputs)
    made = sum(int(f["size"]) for f in files.values())
    assert made > 0
    assert me(client)["used_bytes"] == len(data) + made
    assert client.http.delete(f"/api/job/{job_id}").status_code == 204
    assert me(client)["used_bytes"] == 0


def test_the_python_client_reports_a_quota_507_at_once(
    server: Server, quota: int, tmp_path: Path
) -> None:
    """Unlike a full disk's 507, the quota's is not sent again: waiting frees no room."""
    user = server.client()
    path = tmp_path / "big.csv"
    path.write_bytes(exact_csv(quota + 1))
    with ChuteClient(server.url, token_of(user), retry=RetryPolicy(5, 0.01, 0.02)) as chute:
        job = chute.create_job("too big")
        with pytest.raises(ChuteClientError, match=QUOTA_WORDS):
            chute.upload(job.id, path)
    assert chunk_posts(server.log(), job.id, 507) == 1
    assert chunk_posts(server.log(), job.id, None) == 1


def test_parallel_tus_creations_never_pass_the_quota(server: Server, quota: int) -> None:
    """Each creation locks its user's row while it counts: exactly three of eight fit."""
    client = server.client()
    length = quota // 4 + 1000
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: tus_create(client, length), range(8)))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [507] * 5
    for answer in answers:
        if answer.status_code == 507:
            refused_for_quota(answer)
    assert me(client)["reserved_bytes"] == 3 * length


def test_chunks_through_two_api_processes_never_record_past_the_quota(
    make_server: ServerFactory,
) -> None:
    """Each process sees its own requests streaming; the record checks the database again
    under the user's lock, so what is recorded stays within the quota (README, Quotas)."""
    chunk = 64 * 1024
    srv = make_server("--workers", "2", "--no-worker", CHUTE_USER_QUOTA_BYTES=str(4 * chunk))
    client = srv.client()
    size = chunk + 1000
    data = [exact_csv(size, seed=i) for i in range(12)]
    jobs = [client.new_job() for _ in data]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda i: client.send_chunk(jobs[i], 0, 1, data[i]), range(12)))
    assert sorted(a.status_code for a in answers) == [200] * 3 + [507] * 9
    for answer in answers:
        if answer.status_code == 507:
            refused_for_quota(answer)
    assert me(client)["used_bytes"] == 3 * size
