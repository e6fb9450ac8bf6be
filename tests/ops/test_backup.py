"""`chute backup`: the embedded deployment's data dir copied while it serves, and the copy
served as a data dir of its own (a restore), with a stored job's Parquet downloadable."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

from tests.conftest import Server, serving
from tests.factories import csv_bytes

PASSWORD = "pw-for-backups"


def test_a_backup_taken_while_serving_restores_with_its_jobs_results(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    with serving(tmp_path / "live") as live:
        client = live.client("keeper", PASSWORD)
        job_id = client.new_job("kept")
        client.upload(job_id, csv_bytes(5_000))
        assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
        parquet = client.http.get(f"/api/job/{job_id}/result/data.parquet")
        assert parquet.status_code == 200
        # A second job still uploading: its recorded chunks are kept too.
        unfinished = client.new_job("unfinished")
        data = csv_bytes(20_000)
        half = (len(data) + 1) // 2
        assert client.send_chunk(unfinished, 0, 2, data[:half]).status_code == 200

        restored = tmp_path / "restored"
        restored.mkdir()
        taken = live.cli("backup", str(restored / "data"))
        assert taken.returncode == 0, taken.stderr
        assert "chute.db" in taken.stdout

    # The live server is gone; the copy is served as a data dir of its own.
    with serving(restored) as again, contextlib.closing(signed_in(again)) as http:
        answer = http.get(f"/api/job/{job_id}/result/data.parquet")
        assert answer.status_code == 200, answer.text
        assert answer.content == parquet.content
        job = http.get(f"/api/job/{job_id}").json()
        assert job["status"] == "succeeded"
        status = http.get(f"/api/job/{unfinished}/upload-data").json()
        assert status["state"] == "partial"
        assert [chunk["index"] for chunk in status["chunks"]] == [0], status
        # ...and the upload can be finished on the restored server.
        rest = http.post(f"/api/job/{unfinished}/upload-data",
                         data={"chunk_index": "1", "total_chunks": "2"},
                         files={"file": ("u.csv", data[half:])})  # fmt: skip
        assert rest.status_code == 200, rest.text


def signed_in(server: Server) -> httpx.Client:
    """A client of `server` signed in as the user the backup brought along (not closed:
    the caller's `with` does it)."""
    http = httpx.Client(base_url=server.url, timeout=30)
    token = http.post("/api/auth/token", data={"username": "keeper", "password": PASSWORD})
    assert token.status_code == 200, token.text
    http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return http


def test_a_backup_is_refused_where_it_cannot_be_whole(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    with serving(tmp_path / "live") as live:
        inside = live.cli("backup", str(live.data_dir / "backup"))
        assert inside.returncode == 1 and "outside the data dir" in inside.stderr
        assert not (live.data_dir / "backup").exists()

        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "something").write_text("keep me")
        refused = live.cli("backup", str(busy))
        assert refused.returncode == 1 and "not empty" in refused.stderr
        assert [p.name for p in busy.iterdir()] == ["something"]

        live.env["CHUTE_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
        scaleout = live.cli("backup", str(tmp_path / "elsewhere"))
        assert scaleout.returncode == 1 and "PostgreSQL" in scaleout.stderr
        assert not (tmp_path / "elsewhere").exists()
        assert "Traceback" not in inside.stderr + refused.stderr + scaleout.stderr
