"""The command line's files: tokens (private) and which job each file went to."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from chute.client.state import Credentials, UploadRecords

SERVER = "http://127.0.0.1:1"


def test_tokens_are_private_and_per_server(tmp_path: Path) -> None:
    credentials = Credentials(tmp_path / "config")
    where = credentials.save(SERVER, "secret-1")
    credentials.save("http://other:2", "secret-2")
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    assert credentials.token(SERVER) == "secret-1"
    assert credentials.token("http://other:2") == "secret-2"
    assert credentials.default_server() == "http://other:2"
    assert Credentials(tmp_path / "elsewhere").token(SERVER) is None


def test_a_file_is_known_by_path_size_and_mtime(tmp_path: Path) -> None:
    records = UploadRecords(tmp_path / "state")
    data = tmp_path / "a.csv"
    data.write_text("a,b\n1,2\n")
    records.remember(SERVER, data, 7)
    assert records.job_for(SERVER, data) == 7
    assert records.job_for("http://other:2", data) is None
    os.utime(data, ns=(0, 10**9))
    assert records.job_for(SERVER, data) is None


def test_old_entries_are_dropped_and_a_damaged_file_is_no_obstacle(tmp_path: Path) -> None:
    records = UploadRecords(tmp_path / "state")
    data = tmp_path / "a.csv"
    data.write_text("a\n1\n")
    records.file.path.parent.mkdir(parents=True)
    old = {"x": {"job_id": 1, "at": "2020-01-01T00:00:00+00:00"}, "y": "junk"}
    records.file.path.write_text(json.dumps(old))
    records.remember(SERVER, data, 9)
    # Only the new entry is left: the month-old one and the junk are gone.
    assert set(json.loads(records.file.path.read_text())) == {records.key(SERVER, data)}
    records.file.path.write_text("{not json")
    assert records.job_for(SERVER, data) is None
    records.remember(SERVER, data, 10)
    assert records.job_for(SERVER, data) == 10
