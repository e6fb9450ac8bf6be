"""Helpers for tests of the Python client and the user commands: running `chute` as a
user would (its own home dir, a token, a server), and reading what the server saw."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Client, Server

KiB = 1024


def token_of(user: Client) -> str:
    return str(user.http.headers["Authorization"]).removeprefix("Bearer ")


def user_env(server: Server, home: Path, token: str | None = None) -> dict[str, str]:
    """The environment of a user's shell: its own home (config and state dirs), the
    server in CHUTE_SERVER, and a token in CHUTE_TOKEN when given."""
    env = {k: v for k, v in server.env.items() if not k.startswith(("CHUTE_", "XDG_"))}
    env.update(HOME=str(home), CHUTE_SERVER=server.url)
    if token is not None:
        env["CHUTE_TOKEN"] = token
    return env


def chute_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "chute", *args]


def run_chute(
    env: dict[str, str], *args: str, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        chute_command(*args), env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def chunk_posts(log: str, job_id: int, status: int | None = 200) -> int:
    """Chunk requests of `job_id` in the server's access log that got `status` (None: any)."""
    answer = r"\d{3}" if status is None else str(status)
    line = re.compile(rf'"POST /api/job/{job_id}/upload-data HTTP/1\.1" {answer}\b')
    return len(line.findall(log))


def stored_sha256(user: Client, job_id: int) -> str:
    """The SHA-256 of the job's stored input, once the job has run (the upload's file
    moves into place as the job's input on completion)."""
    user.wait_for(job_id, "succeeded", "failed")
    return user.stored(job_id)[1]


def held_chunks(user: Client, job_id: int) -> set[int]:
    answer = user.http.get(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 200, answer.text
    return {int(chunk["index"]) for chunk in answer.json()["chunks"]}
