"""tuspy (PyPI, pinned) against Chute's tus endpoint (DESIGN §6): a script that stops after
some chunks, the server killed and restarted, and the script run again, resuming the upload
it finds in tuspy's URL storage (tuspy_upload.py beside this file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Client, Server
from tests.tus.conftest import TUS, assert_ran_once, csv_file, offset_of, upload_status

SCRIPT = Path(__file__).with_name("tuspy_upload.py")
# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


def run_tuspy(server: Server, client: Client, **options: Any) -> dict[str, Any]:
    """One run of the script, signed in as `client`: what it printed."""
    options = {
        "endpoint": f"{server.url}{TUS}",
        "headers": {"Authorization": client.http.headers["Authorization"]},
        **options,
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(options)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    said: dict[str, Any] = json.loads(done.stdout)
    return said


def test_a_stopped_upload_resumes_after_a_restart_from_tuspys_url_storage(
    tus_server: Server, part: int, tmp_path: Path
) -> None:
    client = tus_server.client()
    job_id = client.new_job("from tuspy")
    path, data = csv_file(tmp_path, 4 * part + part // 2, name="ledger.csv", seed=4)
    options = {
        "file": str(path),
        "chunk_size": part,
        "metadata": {"job_id": str(job_id), "filename": "ledger.csv"},
        "urls": str(tmp_path / "tus-urls.json"),
    }

    first = run_tuspy(tus_server, client, stop_at=2 * part, **options)
    assert (first["found_url"], first["found_offset"]) == (None, 0), "a new upload"
    assert first["offset"] == 2 * part
    assert upload_status(client, job_id)["bytes_received"] == 2 * part

    tus_server.stop(kill=True)
    tus_server.start(same_port=True)

    second = run_tuspy(tus_server, client, **options)
    assert second["found_url"] == first["url"], "the same upload, found in the URL storage"
    assert second["found_offset"] == 2 * part, "resumed where the server's HEAD said"
    assert (second["url"], second["offset"]) == (first["url"], len(data))
    assert offset_of(client, first["url"]) == len(data)
    assert client.job(job_id)["upload"]["file_name"] == "ledger.csv"
    assert_ran_once(tus_server, client, job_id, data)
