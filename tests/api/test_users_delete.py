"""Deleting a user (`DELETE /api/users/{user_id}`) on a real `chute serve`, over both
deployments: nothing of theirs is left in storage (local disk: the data dir is walked
too; S3: the bucket and its multipart uploads), nothing of anyone else's goes, and a
running job of theirs stops."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chute.auth.service import add_user
from chute.db.session import make_engine, make_sessionmaker
from tests.conftest import Client, Server, ServerFactory, storage_holds
from tests.factories import csv_of_size
from tests.jobs.test_engine import FAST, leftovers, wait_until

pytestmark = pytest.mark.deployments

PASSWORD = "pw-for-tests"
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def admin_http(server: Server) -> Iterator[httpx.Client]:
    with admin_of(server) as http:
        yield http


def admin_of(server: Server) -> httpx.Client:
    """A new admin of the real server, signed in with a bearer token."""
    name = f"admin-{secrets.token_hex(4)}"
    engine = make_engine(server.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            add_user(session, name, PASSWORD, admin=True)
    finally:
        engine.dispose()
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        token = anonymous.post("/api/auth/token", data={"username": name, "password": PASSWORD})
    assert token.status_code == 200, token.text
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.Client(base_url=server.url, timeout=60, headers=bearer)


def tus_started(client: Client, data: bytes, **headers: str) -> str:
    """A tus upload (a partial one with Upload-Concat) with its first half sent."""
    answer = client.http.post(
        "/api/tus/", headers={**TUS, "Upload-Length": str(len(data)), **headers}
    )
    assert answer.status_code == 201, answer.text
    url = answer.headers["Location"]
    half = data[: len(data) // 2]
    sent = client.http.patch(
        url,
        content=half,
        headers={
            **TUS,
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert sent.status_code == 204, sent.text
    return url


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_deleting_a_user_leaves_nothing_of_theirs_in_storage(
    server: Server, admin_http: httpx.Client
) -> None:
    admin = admin_http
    bob, carol = server.client(), server.client()
    data = csv_of_size(3 * server.chunk - 100)
    done = bob.new_job("done")
    bob.upload(done, data)
    kept = carol.new_job("carol's")
    carol.upload(kept, data)
    assert bob.wait_for(done, "succeeded")["status"] == "succeeded"
    carol.wait_for(kept, "succeeded")
    partial = bob.new_job("half sent")
    assert bob.send_chunk(partial, 0, 3, data[: server.chunk]).status_code == 200
    bob.new_job("waiting")
    tus_started(bob, data, **{"Upload-Concat": "partial"})
    tus_started(bob, data, **{"Upload-Metadata": "name dHVz,filename dHVzLmNzdg=="})

    everyone = admin.get("/api/users").json()
    bob_id = next(u["id"] for u in everyone if u["username"] == bob.username)
    bob_jobs = [row[0] for row in server.sql("SELECT id FROM jobs WHERE user_id = :u", u=bob_id)]
    bob_uploads = {
        row[0]
        for row in server.sql(
            "SELECT storage_id FROM uploads WHERE completed_at IS NULL AND job_id IN "
            "(SELECT id FROM jobs WHERE user_id = :u) "
            "UNION SELECT storage_id FROM tus_partials WHERE user_id = :u",
            u=bob_id,
        )
    }
    assert len(bob_jobs) == 4 and len(bob_uploads) == 3
    before = storage_holds(server)
    # His jobs' folders, and on S3 the small tails kept beside his multipart uploads
    # (chute/storage/s3.py: `.chute-tails/<UploadId>/`).
    prefixes = tuple(
        [f"jobs/{j}/" for j in bob_jobs] + [f".chute-tails/{u.split(' ')[0]}/" for u in bob_uploads]
    )
    bob_files = {f for f in before.files if f.startswith(prefixes)}
    assert f"jobs/{done}/input.csv" in bob_files
    assert any(f.endswith("/data.parquet") for f in bob_files), bob_files
    assert bob_uploads <= set(before.uploads)
    carol_files = {f for f in before.files if f.startswith(f"jobs/{kept}/")}
    assert any(f.endswith("/data.parquet") for f in carol_files), carol_files
    on_disk = files_under(server.data_dir)  # the SQLite files change, and stay

    answer = admin.delete(f"/api/users/{bob_id}")
    assert answer.status_code == 204, answer.text

    after = storage_holds(server)
    assert after.files == before.files - bob_files
    assert set(after.uploads) == set(before.uploads) - bob_uploads
    assert carol_files <= after.files
    if not server.scale_out:
        # Local disk: every file of the data dir that went was Bob's; none of his is left.
        left = files_under(server.data_dir)
        gone = on_disk - left
        marks = [f"jobs/{job_id}/" for job_id in bob_jobs] + [f"/{u}/" for u in bob_uploads]
        for path in gone:
            assert any(mark in f"/{path}" for mark in marks), path
        for mark in marks:
            assert not any(mark in f"/{path}" for path in left), mark
        for upload_id in bob_uploads:
            assert any(f"/{upload_id}/" in f"/{path}" for path in gone), upload_id
    for table, column in (("jobs", "user_id"), ("tus_partials", "user_id")):
        assert server.sql(f"SELECT 1 FROM {table} WHERE {column} = :u", u=bob_id) == []
    for job_id in bob_jobs:
        assert server.sql("SELECT 1 FROM uploads WHERE job_id = :j", j=job_id) == []
    assert bob.http.get("/api/job").status_code == 401
    assert carol.job(kept)["status"] == "succeeded"


def test_deleting_a_user_stops_their_running_job(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """As deleting the job would: the worker finds its claim gone at its next heartbeat,
    stops, and leaves no file behind (storage nor scratch)."""
    server = make_server(**FAST)
    bob = server.client()
    journal = tmp_path / "journal"
    job_id = bob.new_job(kind="example", params={"seconds": 60, "journal": str(journal)})
    bob.upload(job_id, csv_of_size(3 * server.chunk))
    wait_until("the job to run", lambda: (bob.job(job_id)["progress"] or 0) > 0)
    with admin_of(server) as admin:
        everyone = admin.get("/api/users").json()
        bob_id = next(u["id"] for u in everyone if u["username"] == bob.username)
        assert admin.delete(f"/api/users/{bob_id}").status_code == 204
    wait_until("no files left", lambda: leftovers(server, job_id) == [], timeout=10)
    time.sleep(1)
    assert journal.read_text().split()[0] == "start"
    assert "end" not in journal.read_text(), "the run went on after its user was deleted"
