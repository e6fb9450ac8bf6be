"""The job engine through a real server and real workers: results, events, plugins,
cancel and delete, and a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import ROOT, Client, Deployment, Server, ServerFactory, serving, storage_holds
from tests.factories import csv_bytes, csv_of_size
from tests.jobs.test_profile import FILLER, TRICKY

PLUGINS = str(ROOT / "tests" / "plugins")
# Quick heartbeats and sweeps, so a lost worker is noticed within a few seconds.
FAST = {
    # The plugin, and whatever the tests run with (a worktree's chute, say) after it.
    "PYTHONPATH": os.pathsep.join(p for p in (PLUGINS, os.environ.get("PYTHONPATH")) if p),
    "CHUTE_HEARTBEAT_INTERVAL": "0.2",
    "CHUTE_HEARTBEAT_TIMEOUT": "2",
    "CHUTE_SWEEP_INTERVAL": "0.3",
}


# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def plugin_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[Server]:
    """A server (API and worker) with the example plugin installed."""
    with serving(tmp_path_factory.mktemp("chute-plugins"), deployment, **FAST) as server:
        yield server


def leftovers(server: Server, job_id: int) -> list[str]:
    """What a job still has on the server: its stored files and any unfinished upload (in
    the storage, local or S3), and the worker's scratch files (on local disk)."""
    held = storage_holds(server)
    files = sorted(k for k in held.files if k.startswith(f"jobs/{job_id}/"))
    # os.walk, not rglob: the worker may remove a folder while it is listed (the walk
    # skips what vanished; rglob raises).
    scratch = [
        os.path.join(root, name)
        for root, dirs, names in os.walk(server.data_dir / "scratch")
        for name in dirs + names
    ]
    return files + sorted(held.uploads) + sorted(scratch)


def wait_until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def start_worker(server: Server) -> subprocess.Popen[bytes]:
    return server.start_worker()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


# --- the profile job, end to end -----------------------------------------------------------


def test_profile_job_result_and_parquet_download(
    server: Server, client: Client, tmp_path: Path
) -> None:
    job_id = client.new_job()
    client.upload(job_id, TRICKY)
    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 100
    result = job["result"]
    assert result["rows"] == 6 + FILLER
    assert result["rejects"]["count"] == 3
    assert [r["line"] for r in result["rejects"]["rows"]] == [7, 9, 11 + FILLER]
    assert client.http.get(f"/api/job/{job_id}/result").json() == result

    answer = client.http.get(f"/api/job/{job_id}/result/data.parquet")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    assert f"job-{job_id}-data.parquet" in answer.headers["content-disposition"]
    assert len(answer.content) == result["parquet"]["size"]
    downloaded = tmp_path / "data.parquet"
    downloaded.write_bytes(answer.content)
    with duckdb.connect() as con:
        rows = con.execute("SELECT count(*), min(id) FROM read_parquet(?)", [str(downloaded)])
        assert rows.fetchone() == (6 + FILLER, 1)

    other = server.client()
    for path in ("result", "result/data.parquet", "events"):
        answer = other.http.get(f"/api/job/{job_id}/{path}")
        assert (answer.status_code, answer.json()) == (404, {"detail": "Job not found."})


def test_no_result_before_success_and_no_such_file(client: Client) -> None:
    waiting = client.new_job()
    for path in ("result", "result/data.parquet"):
        answer = client.http.get(f"/api/job/{waiting}/{path}")
        assert answer.status_code == 409
        assert answer.json() == {"detail": "The job has no result: it is awaiting_upload."}
    done = client.new_job()
    client.upload(done, csv_bytes(100))
    client.wait_for(done, "succeeded")
    answer = client.http.get(f"/api/job/{done}/result/nothing.txt")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "The job has no result file named 'nothing.txt'."}


def test_a_file_without_its_header_fails_in_plain_words(client: Client) -> None:
    job_id = client.new_job()
    client.upload(job_id, b"".join(b"%d,%d,%d\n" % (i, i * 2, i * 3) for i in range(1000)))
    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "failed"
    assert job["error"].startswith("The file has no header row")
    assert '{"header": false}' in job["error"]
    assert "Traceback" not in job["error"] and "/" not in job["error"].replace("/api", "")
    assert job["result"] is None


def test_kind_and_params_are_checked_when_the_job_is_created(client: Client) -> None:
    cases = [
        ({"kind": "nope"}, "kind: unknown job kind 'nope'; this server runs: profile."),
        ({"params": {"delimiter": ";;"}}, "params.delimiter: String should have at most 1"),
        ({"params": {"colour": "red"}}, "params.colour: Extra inputs are not permitted"),
        ({"params": {"encoding": "klingon"}}, "params.encoding: Value error, unknown encoding"),
        ({"params": [1, 2]}, "params: Input should be a valid dictionary"),
        ({"kind": ""}, "kind: String should have at least 1 character"),
    ]
    before = client.http.get("/api/job").json()["total"]
    for body, words in cases:
        answer = client.http.post("/api/job", json={"name": "bad", **body})
        assert answer.status_code == 422, body
        assert answer.json()["detail"].startswith(words), answer.json()
    assert client.http.get("/api/job").json()["total"] == before


# Python codecs that are not a text file's encoding: with them chunk 0 answered 500 for
# good (base64 ... undefined), or the API inflated what was sent (zlib, bz2).
NOT_TEXT_ENCODINGS = [
    "base64",
    "hex",
    "rot13",
    "quopri",
    "uu",
    "punycode",
    "undefined",
    "zlib",
    "bz2",
]


def test_params_encoding_takes_only_text_encodings(client: Client) -> None:
    before = client.http.get("/api/job").json()["total"]
    for encoding in NOT_TEXT_ENCODINGS:
        answer = client.http.post(
            "/api/job", json={"name": "bad", "params": {"encoding": encoding}}
        )
        assert answer.status_code == 422, (encoding, answer.text)
        assert answer.json() == {
            "detail": f"params.encoding: Value error, {encoding!r} is not the character "
            "encoding of a text file (use one such as utf-8, latin-1, cp1252 or utf-16)"
        }
    assert client.http.get("/api/job").json()["total"] == before
    text = "name,city\nJosé,Zürich\n"
    for encoding in ("latin-1", "utf-16", "cp1252"):
        job_id = client.new_job(params={"encoding": encoding})
        client.upload(job_id, text.encode(encoding))
        job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
        assert job["status"] == "succeeded", job
        assert job["result"]["preview"]["rows"] == [["José", "Zürich"]]


def test_a_stored_job_with_a_bad_encoding_gets_422_on_chunk_0(
    server: Server, client: Client
) -> None:
    # Jobs stored before the check (or written by other means) must not make chunk 0 fail
    # with a 500: the check of chunk 0 refuses the encoding too.
    from sqlalchemy import create_engine, update

    from chute.db.models import Job

    engine = create_engine(server.database_url)
    try:
        for encoding in NOT_TEXT_ENCODINGS:
            job_id = client.new_job()
            with engine.begin() as conn:
                conn.execute(
                    update(Job).where(Job.id == job_id).values(params={"encoding": encoding})
                )
            answer = client.send_chunk(job_id, 0, 1, b"aWQsbmFtZQoxLDIK\n")
            assert answer.status_code == 422, (encoding, answer.text)
            assert answer.json()["detail"] == (
                "This does not look like a CSV file: the job's encoding param: "
                f"{encoding!r} is not the character encoding of a text file "
                "(use one such as utf-8, latin-1, cp1252 or utf-16)"
            )
            held = client.http.get(f"/api/job/{job_id}/upload-data").json()
            assert (held["chunks"], held["bytes_received"]) == ([], 0)
            assert client.job(job_id)["status"] == "awaiting_upload"
            # The refused chunk leaves an open (empty) upload in the storage until the job
            # is deleted or the upload expires: delete it, as other tests count them.
            assert client.http.delete(f"/api/job/{job_id}").status_code == 204
    finally:
        engine.dispose()


def strings(value: Any) -> Iterator[str]:
    """Every text in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_a_result_holds_no_text_over_200_characters(client: Client) -> None:
    # 20 rows with 300 KB of text each in a BIGINT column (after the rows the types are
    # sniffed from): their reasons and lines were kept whole, megabytes in every answer
    # and event carrying the job. Also a long column name and long values in the preview.
    long_name = "n" * 5000
    lines = [f"id,{long_name},note"]
    lines += [f"{i},{i},{'y' * 100_000 if i < 3 else 'short'}" for i in range(21_000)]
    lines += [f"{i},{chr(97 + i % 26) * 300_000},late" for i in range(20)]
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > 6_000_000
    job_id = client.new_job()
    client.upload(job_id, data)
    job = client.wait_for(job_id, "succeeded", "failed", timeout=120)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["rows"] == 21_000 and result["rejects"]["count"] == 20
    assert [c["type"] for c in result["columns"]] == ["BIGINT", "BIGINT", "VARCHAR"]
    reason = result["rejects"]["rows"][0]["reason"]
    assert reason.startswith('column "nnnn') and reason.endswith('…" is not a BIGINT'), reason
    for path in (f"/api/job/{job_id}", "/api/job", f"/api/job/{job_id}/result"):
        answer = client.http.get(path)
        assert answer.status_code == 200
        assert len(answer.content) < 200_000, (path, len(answer.content))
        longest = max(strings(answer.json()), key=len)
        assert len(longest) <= 200, (path, longest[:300])
    assert result["columns"][1]["name"] == "n" * 199 + "…"
    assert result["preview"]["rows"][0][2] == "y" * 199 + "…"


def test_a_file_too_wide_to_profile_fails_in_plain_words(client: Client) -> None:
    # 100,000 columns in 2.4 MB ran DuckDB out of memory: "could not be read as CSV".
    data = "".join(",".join(str((r + c) % 10) for c in range(100_000)) + "\n" for r in range(12))
    job_id = client.new_job(params={"header": False})
    client.upload(job_id, data.encode())
    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert (job["status"], job["error"]) == (
        "failed",
        "The file has 100,000 columns; Chute profiles at most 10,000.",
    )


# --- plugins and events --------------------------------------------------------------------


def test_plugin_kind_runs_and_events_follow_the_job(plugin_server: Server) -> None:
    client = plugin_server.client()
    data = csv_bytes(5000)
    job_id = client.new_job(kind="example", params={"seconds": 1.5})
    events: list[tuple[str, dict[str, Any]]] = []
    with client.http.stream("GET", f"/api/job/{job_id}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        name = ""
        uploaded = False
        for line in lines:
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if not uploaded:
                    client.upload(job_id, data)
                    uploaded = True
    # The stream ended by itself, after the final status.
    assert {name for name, _ in events} == {"job"}
    statuses = [job["status"] for _, job in events]
    assert statuses[0] == "awaiting_upload"
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    assert statuses.index("running") < statuses.index("succeeded")
    progress = [job["progress"] for _, job in events if job["status"] == "running"]
    assert progress == sorted(progress) and len(set(progress)) > 1, progress
    final = events[-1][1]
    assert final["result"] == {"lines": data.count(b"\n")}
    assert final["kind"] == "example"


def test_events_end_with_gone_when_the_job_is_deleted(plugin_server: Server) -> None:
    client = plugin_server.client()
    job_id = client.new_job()
    seen = []
    with client.http.stream("GET", f"/api/job/{job_id}/events") as stream:
        for line in stream.iter_lines():
            seen.append(line)
            if line.startswith("data: ") and len(seen) < 6:
                assert client.http.delete(f"/api/job/{job_id}").status_code == 204
    said = [line for line in seen if line]
    assert said[-2:] == ["event: gone", 'data: {"detail": "Job not found."}']


def test_a_kind_that_crashes_its_process_fails_the_job_cleanly(plugin_server: Server) -> None:
    client = plugin_server.client()
    job_id = client.new_job(kind="example", params={"crash": True})
    client.upload(job_id, csv_bytes(100))
    job = client.wait_for(job_id, "succeeded", "failed")
    assert (job["status"], job["error"]) == ("failed", "The job's process stopped unexpectedly.")
    # The worker lives on.
    after = client.new_job(kind="example")
    client.upload(after, csv_bytes(10))
    assert client.wait_for(after, "succeeded", "failed")["result"] == {"lines": 11}


# --- cancel and delete ----------------------------------------------------------------------


def running_job(client: Client, tmp_path: Path, seconds: float = 60) -> tuple[int, Path]:
    journal = tmp_path / "journal"
    job_id = client.new_job(kind="example", params={"seconds": seconds, "journal": str(journal)})
    client.upload(job_id, csv_bytes(2000))
    wait_until("the job to run", lambda: (client.job(job_id)["progress"] or 0) > 0)
    return job_id, journal


def test_cancel_stops_a_running_job_and_leaves_no_files(
    plugin_server: Server, tmp_path: Path
) -> None:
    client = plugin_server.client()
    job_id, journal = running_job(client, tmp_path)
    answer = client.http.post(f"/api/job/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    # The worker's run stops at its next heartbeat and cleans up after itself.
    wait_until("no files left", lambda: leftovers(plugin_server, job_id) == [], timeout=10)
    assert journal.read_text().split()[0] == "start"
    time.sleep(1)
    assert "end" not in journal.read_text(), "the run went on after its cancel"
    job = client.job(job_id)
    assert (job["status"], job["result"]) == ("cancelled", None)
    # The worker is free again: a new job runs.
    after = client.new_job(kind="example")
    client.upload(after, csv_bytes(10))
    assert client.wait_for(after, "succeeded", "failed")["status"] == "succeeded"


def test_delete_stops_a_running_job_and_removes_its_files(
    plugin_server: Server, tmp_path: Path
) -> None:
    client = plugin_server.client()
    job_id, journal = running_job(client, tmp_path)
    assert client.http.delete(f"/api/job/{job_id}").status_code == 204
    assert client.http.get(f"/api/job/{job_id}").status_code == 404
    wait_until("no files left", lambda: leftovers(plugin_server, job_id) == [], timeout=10)
    time.sleep(1)
    assert "end" not in journal.read_text()


def test_cancel_and_delete_of_finished_jobs_leave_no_files(
    client: Client, server: Server, chunk: int
) -> None:
    cancelled = client.new_job()
    client.upload(cancelled, csv_of_size(3 * chunk + chunk // 2))
    client.wait_for(cancelled, "succeeded")
    assert client.http.post(f"/api/job/{cancelled}/cancel").status_code == 409
    assert leftovers(server, cancelled) != []  # a succeeded job keeps its files
    assert client.http.delete(f"/api/job/{cancelled}").status_code == 204
    assert leftovers(server, cancelled) == []


def test_cancel_of_a_queued_job_removes_its_upload(make_server: ServerFactory, chunk: int) -> None:
    server = make_server("--no-worker")
    client = server.client()
    job_id = client.new_job()
    client.upload(job_id, csv_of_size(4 * chunk + chunk // 2))
    assert client.job(job_id)["status"] == "queued"
    assert leftovers(server, job_id) != []
    assert client.http.post(f"/api/job/{job_id}/cancel").json()["status"] == "cancelled"
    assert leftovers(server, job_id) == []
    worker = start_worker(server)  # finds the job's task, and nothing to do
    try:
        time.sleep(2)
        assert client.job(job_id)["status"] == "cancelled"
        assert leftovers(server, job_id) == []
    finally:
        stop(worker)


# --- a worker killed mid-job ---------------------------------------------------------------


def test_killed_worker_job_finishes_once_on_a_second_worker(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server("--no-worker", **FAST)
    client = server.client()
    first = start_worker(server)
    second = None
    try:
        job_id, journal = running_job(client, tmp_path, seconds=4)
        stop(first)
        killed = journal.read_text().split()
        assert killed[0] == "start" and len(killed) == 2
        # The run's own process died with its worker: it never finishes the job.
        wait_until("the first run's process to end", lambda: not alive(int(killed[1])))
        second = start_worker(server)
        job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2
        assert job["result"] == {"lines": 2001}
        # Started twice, finished once, by the second worker's run.
        runs = [line.split() for line in journal.read_text().splitlines()]
        assert [what for what, _ in runs] == ["start", "start", "end"]
        assert runs[2][1] == runs[1][1] != runs[0][1]
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server("--no-worker", CHUTE_MAX_ATTEMPTS="1", **FAST)
    client = server.client()
    first = start_worker(server)
    second = None
    try:
        job_id, journal = running_job(client, tmp_path)
        stop(first)
        dead_runs = scratch_of(server, job_id)
        second = start_worker(server)  # its sweeper finds the silent job
        job = client.wait_for(job_id, "failed", "succeeded", timeout=30)
        assert job["status"] == "failed"
        assert job["error"] == (
            "The job's worker stopped before it finished (tried 1 of 1 times); "
            "it is not tried again."
        )
        assert journal.read_text().split()[0] == "start"
        assert len(journal.read_text().split()) == 2  # started once, never finished
        # The dead run's scratch folder (with S3, a whole copy of the input) was left; the
        # job is not run again, so the sweeper removes it.
        assert dead_runs, "the killed run left no scratch folder"
        wait_until("the dead run's folder removed", lambda: not scratch_of(server, job_id))
    finally:
        stop(first)
        if second is not None:
            stop(second)


def scratch_of(server: Server, job_id: int) -> list[Path]:
    return sorted((server.data_dir / "scratch").glob(f"{job_id}-*"))


def test_a_starting_worker_removes_stale_scratch_folders_only(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # Two workers on one data dir (as in the scale-out deployment on one host): the second
    # one, starting, removes what dead runs left and keeps the first one's live run. The
    # sweeper is kept out of it (an hour between sweeps).
    server = make_server("--no-worker", **{**FAST, "CHUTE_SWEEP_INTERVAL": "3600"})
    client = server.client()
    first = start_worker(server)
    second = None
    try:
        job_id, _ = running_job(client, tmp_path)
        [live] = scratch_of(server, job_id)
        stale = [
            server.data_dir / "scratch" / f"{job_id}-00ff",
            server.data_dir / "scratch" / "424242-abcd",
        ]
        for folder in stale:
            (folder / "outputs").mkdir(parents=True)
            (folder / "input.csv").write_bytes(csv_bytes(1000))
        second = start_worker(server)
        wait_until("the stale folders removed", lambda: not any(f.exists() for f in stale))
        assert scratch_of(server, job_id) == [live]
        assert client.job(job_id)["status"] == "running"
        assert client.http.post(f"/api/job/{job_id}/cancel").status_code == 200
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_lost_enqueue_is_found_by_the_sweeper(make_server: ServerFactory) -> None:
    server = make_server("--no-worker", CHUTE_REQUEUE_AFTER="1", **FAST)
    client = server.client()
    job_id = client.new_job()
    client.upload(job_id, csv_bytes(500))
    assert client.job(job_id)["status"] == "queued"
    # Lose the task: as if the queue had dropped it between the commit and the enqueue.
    queue = server.queue()
    assert queue.pending_count() == 1
    queue.flush()
    assert queue.pending_count() == 0
    worker = start_worker(server)
    try:
        job = client.wait_for(job_id, "succeeded", "failed", timeout=30)
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        assert job["result"]["rows"] == 500
    finally:
        stop(worker)
