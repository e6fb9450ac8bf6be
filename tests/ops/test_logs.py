"""CHUTE_LOG_FORMAT=json: every line of a whole run (API, worker, job process) is a JSON
object; chunks and job transitions say whose and which; requests carry their id; no
password or token used in the run appears anywhere in the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import serving
from tests.factories import csv_bytes, split

PASSWORD = "Pw-that-must-never-be-logged-7c1e"
FORGED_API_TOKEN = "chute_" + "Forged-api-t0ken" * 3


def test_a_whole_runs_json_log_names_who_and_what_and_no_secret(tmp_path: Path) -> None:
    with serving(tmp_path, CHUTE_LOG_FORMAT="json") as server:
        client = server.client("logger", PASSWORD)
        token = client.http.headers["Authorization"].split()[1]
        user_id = client.http.get("/api/auth/me").json()["id"]
        data = csv_bytes(30_000)
        chunks = split(data, (len(data) + 2) // 3)
        job_id = client.new_job("logged")
        for index, chunk in enumerate(chunks):
            assert client.send_chunk(job_id, index, len(chunks), chunk).status_code == 200
        assert client.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
        api_token, token_job = api_token_run(server.url, client.http, csv_bytes(3_000, seed=1))
        # A wrong password and a forged token are secrets too: never echoed.
        with httpx.Client(base_url=server.url) as anonymous:
            wrong = anonymous.post(
                "/api/auth/token", data={"username": "logger", "password": PASSWORD + "x"}
            )
            assert wrong.status_code == 401
            forged = anonymous.get("/api/job", headers={"Authorization": "Bearer forged-Tok3n"})
            assert forged.status_code == 401
            traced = anonymous.get("/api/config", headers={"X-Request-ID": "trace-42"})
            odd = anonymous.get("/api/config", headers={"X-Request-ID": "a b;c"})
        assert traced.headers["x-request-id"] == "trace-42"
        assert odd.headers["x-request-id"] not in ("", "a b;c")
        assert len(odd.headers["x-request-id"]) == 16
        log = server.log()

    for secret in (PASSWORD, PASSWORD + "x", token, "forged-Tok3n", api_token, FORGED_API_TOKEN):
        assert secret not in log
    admin_password = (tmp_path / "data" / "initial-admin-password").read_text().strip()
    assert admin_password not in log

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    chunk_lines = [line for line in lines if line.get("protocol") == "chunks"]
    recorded = [line for line in chunk_lines if line.get("job_id") == job_id]
    # A chunk sent with an API token names the token's user.
    assert [line["user_id"] for line in chunk_lines if line["job_id"] == token_job] == [user_id]
    assert sorted(line["chunk"] for line in recorded) == list(range(len(chunks)))
    assert {(line["user_id"], line["job_id"]) for line in recorded} == {(user_id, job_id)}
    assert all("request_id" in line for line in recorded)
    assert sum(line["bytes"] for line in recorded) == len(data)
    transitions = [line for line in lines if line.get("job_id") == job_id and "status" in line]
    assert [line["status"] for line in transitions] == ["running", "succeeded"]
    assert all(line["user_id"] == user_id for line in transitions)
    assert access(lines, "trace-42")


def api_token_run(url: str, signed_in: httpx.Client, data: bytes) -> tuple[str, int]:
    """An API token's life in the run: made, used for an upload, listed, revoked, then
    refused; and a forged one refused. Returns its secret and the job it uploaded to."""
    made = signed_in.post("/api/tokens", json={"name": "logged pipeline", "expires_in_days": 1})
    assert made.status_code == 201, made.text
    secret: str = made.json()["secret"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as script:
        job = script.post("/api/job", json={"name": "by token"})
        assert job.status_code == 201, job.text
        chunk = script.post(
            f"/api/job/{job.json()['id']}/upload-data",
            data={"chunk_index": "0", "total_chunks": "1"},
            files={"file": ("data.csv", data, "text/csv")},
        )
        assert chunk.status_code == 200, chunk.text
        assert script.get("/api/tokens").json()["items"][0]["last_used_at"] is not None
        assert signed_in.delete(f"/api/tokens/{made.json()['id']}").status_code == 204
        assert script.get("/api/job").status_code == 401
        forged = script.get("/api/job", headers={"Authorization": f"Bearer {FORGED_API_TOKEN}"})
        assert forged.status_code == 401
    return secret, int(job.json()["id"])


def access(lines: list[dict[str, Any]], request_id: str) -> bool:
    """Whether uvicorn's access line of the request `request_id` is in the log."""
    return any(
        line["logger"] == "uvicorn.access" and line.get("request_id") == request_id
        for line in lines
    )
