"""tus-js-client (npm, pinned) in Node against Chute's tus endpoint (DESIGN §6): a multi-part
upload, a server killed and restarted under a PATCH, parallel uploads through concatenation,
and a wrong checksum. Each ends with the stored file equal to the one sent and its job run
exactly once (tests/tus/conftest.py)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.tus.conftest import (
    RETRY_DELAYS,
    TusJsFactory,
    assert_ran_once,
    csv_file,
    head,
    offset_of,
    upload_status,
    wait_until,
)

# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


def upload_url_pattern(server: Server) -> str:
    """A `Location` of Chute's tus endpoint: relative, or absolute on the server's origin."""
    return rf"(?:{re.escape(server.url)})?/api/tus/[0-9a-f]{{32}}"


def test_a_multi_part_upload_creates_a_named_job_that_runs_once(
    tus_server: Server, tus_js: TusJsFactory, part: int, tmp_path: Path
) -> None:
    client = tus_server.client()
    path, data = csv_file(tmp_path, 3 * part + part // 2)
    # PATCHes that do not line up with the server's parts.
    chunk_size = part * 3 // 4
    run = tus_js(
        tus_server,
        client,
        path,
        chunkSize=chunk_size,
        metadata={"name": "sales of March", "filename": "sales.csv"},
    )
    done = run.result()
    assert done["event"] == "success", run.said()

    [created] = run.responses("POST")
    assert created["status"] == 201
    assert re.fullmatch(upload_url_pattern(tus_server), created["location"])
    assert parsedate_to_datetime(created["expires"]) > datetime.now(UTC)
    job_id = int(created["jobId"])
    ends = [min(end, len(data)) for end in range(chunk_size, len(data) + chunk_size, chunk_size)]
    assert len(ends) == math.ceil(len(data) / chunk_size) >= 5
    patches = run.responses("PATCH")
    assert [(p["status"], int(p["offset"])) for p in patches] == [(204, end) for end in ends]

    job = client.job(job_id)
    assert (job["name"], job["kind"]) == ("sales of March", "profile")
    assert job["upload"]["file_name"] == "sales.csv"
    assert [j["id"] for j in client.http.get("/api/job").json()["items"]] == [job_id]
    assert_ran_once(tus_server, client, job_id, data)

    # A client that missed the last answer sees the upload done.
    answer = head(client, done["url"])
    assert answer.status_code == 200
    assert answer.headers["Upload-Offset"] == answer.headers["Upload-Length"] == str(len(data))
    held = upload_status(client, job_id)
    assert (held["state"], held["bytes_received"]) == ("complete", len(data))


def test_the_server_killed_under_a_patch_and_restarted_the_client_resumes_from_head(
    tus_server: Server, tus_js: TusJsFactory, part: int, tmp_path: Path
) -> None:
    client = tus_server.client()
    job_id = client.new_job("resumed")
    path, data = csv_file(tmp_path, 4 * part + part // 2, seed=1)
    chunk_size = 2 * part
    # The second PATCH (from 2 parts on) stops sending at 3.5 parts and stays open.
    hold_at = 3 * part + part // 2
    run = tus_js(
        tus_server,
        client,
        path,
        chunkSize=chunk_size,
        holdAt=hold_at,
        retryDelays=RETRY_DELAYS,
        metadata={"job_id": str(job_id), "filename": "resumed.csv"},
    )
    run.until("held")
    # What the open PATCH sent is recorded part by part as it streams, not at its end.
    wait_until(
        "the open PATCH's first whole part recorded",
        lambda: upload_status(client, job_id)["bytes_received"] >= 3 * part,
    )
    tus_server.stop(kill=True)
    tus_server.start(same_port=True)
    done = run.result()
    assert done["event"] == "success", run.said()

    assert len(run.requests("POST")) == 1, "the same upload, not a new one"
    [created] = run.responses("POST")
    assert int(created["jobId"]) == job_id
    answered = [r for r in run.responses("HEAD") if r["status"] == 200]
    assert answered, run.said()
    resumed_at = int(answered[0]["offset"])
    assert answered[0]["length"] == str(len(data))
    # Resumed from what the server had recorded: the acknowledged 2 parts and the part the
    # open PATCH had completed before the kill; never from 0.
    assert 3 * part <= resumed_at <= hold_at
    patch_offsets = [int(r["offset"]) for r in run.requests("PATCH")]
    assert patch_offsets[:2] == [0, chunk_size]
    assert patch_offsets[2] == resumed_at, run.said()
    assert_ran_once(tus_server, client, job_id, data)


def test_four_parallel_uploads_concatenated_into_one_job(
    tus_server: Server, tus_js: TusJsFactory, part: int, tmp_path: Path
) -> None:
    client = tus_server.client()
    # Each of the four partial uploads a little over one part.
    path, data = csv_file(tmp_path, 4 * part + part // 2, name="orders.csv", seed=2)
    run = tus_js(
        tus_server,
        client,
        path,
        parallelUploads=4,
        metadata={"name": "orders", "filename": "orders.csv"},
    )
    done = run.result()
    assert done["event"] == "success", run.said()

    posts = run.requests("POST")
    assert [p["concat"] for p in posts[:4]] == ["partial"] * 4
    assert len(posts) == 5 and posts[4]["concat"].startswith("final;")
    answers = run.responses("POST")
    assert [a["status"] for a in answers] == [201] * 5
    for answer in answers:
        assert re.fullmatch(upload_url_pattern(tus_server), answer["location"])
    patched = sum(int(r["offset"]) for r in run.responses("PATCH"))
    assert patched == len(data), "each partial upload sent its slice, once"
    final = answers[4]
    job_id = int(final["jobId"])
    # The partial uploads made no job: the final one did, as its metadata says.
    assert [j["id"] for j in client.http.get("/api/job").json()["items"]] == [job_id]
    job = client.job(job_id)
    assert (job["name"], job["upload"]["file_name"]) == ("orders", "orders.csv")
    assert_ran_once(tus_server, client, job_id, data)
    assert offset_of(client, done["url"]) == len(data)


def test_a_wrong_checksum_is_refused_with_460_and_nothing_of_that_patch_is_kept(
    tus_server: Server, tus_js: TusJsFactory, part: int, tmp_path: Path
) -> None:
    client = tus_server.client()
    job_id = client.new_job("checked")
    path, data = csv_file(tmp_path, 4 * part + part // 2, name="checked.csv", seed=3)
    # Every PATCH two whole parts long; the second one's checksum is wrong.
    chunk_size = 2 * part
    options = {
        "chunkSize": chunk_size,
        "checksum": True,
        "metadata": {"job_id": str(job_id), "filename": "checked.csv"},
    }
    refused = tus_js(tus_server, client, path, corruptAt=chunk_size, **options)
    failed = refused.result()
    assert (failed["event"], failed["status"]) == ("error", 460), refused.said()
    assert [r["status"] for r in refused.responses("PATCH")] == [204, 460]
    url = failed["url"]
    # Neither of the two parts that PATCH carried was kept, though each arrived whole.
    assert offset_of(client, url) == chunk_size
    assert upload_status(client, job_id)["bytes_received"] == chunk_size
    assert client.job(job_id)["status"] == "uploading"

    # The same client, given the upload's URL, resumes it with right checksums.
    resumed = tus_js(tus_server, client, path, uploadUrl=url, **options)
    assert resumed.result()["event"] == "success", resumed.said()
    assert resumed.requests("POST") == []
    assert resumed.responses("HEAD")[0]["offset"] == str(chunk_size)
    assert [int(r["offset"]) for r in resumed.requests("PATCH")] == [chunk_size, 2 * chunk_size]
    assert assert_ran_once(tus_server, client, job_id, data)["name"] == "checked"
