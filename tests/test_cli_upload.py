"""`chute upload`, `jobs`, `status` and `login` as a user runs them, against a real server:
interrupted and resumed, across a server restart, refused, and with bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.faulty_proxy import PASS, STALL, Answer, FaultyProxy, Verdict
from tests.client_support import (
    KiB,
    chunk_posts,
    chute_command,
    held_chunks,
    run_chute,
    stored_sha256,
    token_of,
    user_env,
)
from tests.conftest import Client, Server, ServerFactory, serving
from tests.factories import HOSTILE, csv_bytes, csv_of_size, split

CHUNK = 64 * KiB


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with small chunks, shared by the module's upload tests: each has a user
    of its own, and the checks read only that user's jobs and their requests in the log."""
    with serving(tmp_path_factory.mktemp("cli-upload"), CHUTE_CHUNK_SIZE=str(CHUNK)) as server:
        yield server


@pytest.fixture(scope="module")
def signed_in_env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One user's shell for the module's tests that only read or get refused."""
    return user_env(server, tmp_path_factory.mktemp("home"), token_of(server.client()))


def csv_file(tmp_path: Path, rows: int, seed: int = 0) -> tuple[Path, bytes]:
    data = csv_bytes(rows, seed)
    path = tmp_path / f"upload-{seed}.csv"
    path.write_bytes(data)
    return path, data


def only_job(user: Client, timeout: float = 30) -> int:
    """The id of the user's one job, once the command has made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = user.http.get("/api/job").json()["items"]
        if items:
            assert len(items) == 1, items
            return int(items[0]["id"])
        time.sleep(0.05)
    raise AssertionError("no job was created")


def wait_for_chunks(user: Client, job_id: int, count: int, timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = held_chunks(user, job_id)
        if len(held) >= count:
            return held
        time.sleep(0.05)
    raise AssertionError(f"the server never held {count} chunks of job {job_id}")


def test_upload_and_wait_prints_the_profile(slow_server: Server, tmp_path: Path) -> None:
    user = slow_server.client()
    data = csv_bytes(20_000) + b"1,2,3,4\n"  # one row too many fields: a rejected row
    path = tmp_path / "sales.csv"
    path.write_bytes(data)
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    result = run_chute(env, "upload", str(path), "--new", "sales", "--parallel", "3", "--wait")
    assert result.returncode == 0, result.stderr
    total = len(split(data, CHUNK))
    assert f"sent {total} of {total} chunks" in result.stderr
    assert "succeeded" in result.stderr
    rows = [
        [cell for cell in line.split() if cell not in "│┃"] for line in result.stdout.splitlines()
    ]
    # The profile's summary, its columns, its first rows and its rejected row.
    assert ["rows", "20000"] in rows
    assert ["rejected", "rows", "1"] in rows
    assert next(row[:3] for row in rows if row[:1] == ["amount"]) == ["amount", "DOUBLE", "0"]
    assert ["1", "name-0-1", "7.01"] in rows
    assert any(
        row[:1] == ["20002"] and "expected 3 fields, found 4" in " ".join(row) for row in rows
    )
    job_id = only_job(user)
    digest = hashlib.sha256(data).hexdigest()
    assert stored_sha256(user, job_id) == digest
    assert user.job(job_id)["name"] == "sales"

    # The same command again finds the job and sends nothing.
    again = run_chute(env, "upload", str(path), "--parallel", "3")
    assert again.returncode == 0, again.stderr
    assert f"Job {job_id}" in again.stderr and "already uploaded" in again.stderr
    assert chunk_posts(slow_server.log(), job_id) == total

    listed = run_chute(env, "jobs")
    assert listed.returncode == 0, listed.stderr
    assert "sales" in listed.stdout and "succeeded" in listed.stdout
    shown = run_chute(env, "status", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert "first rows" in shown.stdout and "name-0-1" in shown.stdout


def test_killed_upload_resumes_with_only_the_missing_chunks(
    slow_server: Server, tmp_path: Path
) -> None:
    user = slow_server.client()
    path, data = csv_file(tmp_path, 40_000, seed=1)
    total = len(split(data, CHUNK))
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    # A bandwidth limit keeps the first run slow enough to be killed in the middle.
    command = ["upload", str(path), "--new", "killed", "--parallel", "2", "--limit-rate", "32K"]
    first = subprocess.Popen(
        chute_command(*command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        job_id = only_job(user)
        wait_for_chunks(user, job_id, 4)
    finally:
        first.kill()
        first.wait()
    time.sleep(0.5)  # a chunk cut off by the kill is dropped by the server, not recorded
    held = held_chunks(user, job_id)
    assert 4 <= len(held) < total
    log_before = len(slow_server.log())

    second = run_chute(env, *command[:-2])  # the same command, at full speed
    assert second.returncode == 0, second.stderr
    assert f"Job {job_id}" in second.stderr and "found from an earlier run" in second.stderr
    assert f"{len(held)} were already on the server" in second.stderr
    # The server saw one chunk request per missing chunk, and none for those it held.
    assert chunk_posts(slow_server.log()[log_before:], job_id) == total - len(held)
    assert stored_sha256(user, job_id) == hashlib.sha256(data).hexdigest()
    assert len(user.http.get("/api/job").json()["items"]) == 1


def test_ctrl_c_stops_the_upload_and_the_same_command_resumes(
    slow_server: Server, tmp_path: Path
) -> None:
    user = slow_server.client()
    path, data = csv_file(tmp_path, 40_000, seed=5)
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    # 32K: the whole file would take 32 s, so even a loaded machine, whose polls of the
    # server may take seconds, signals it midway (it is interrupted after 3 chunks).
    command = ["upload", str(path), "--parallel", "3", "--limit-rate", "32K"]
    first = subprocess.Popen(
        chute_command(*command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        job_id = only_job(user)
        wait_for_chunks(user, job_id, 3)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    assert f"Run the same command again to send the rest of job {job_id}" in stderr
    assert "Traceback" not in stderr
    held = held_chunks(user, job_id)
    assert len(held) < len(split(data, CHUNK))

    second = run_chute(env, *command[:-2])  # the same command, at full speed
    assert second.returncode == 0, second.stderr
    assert f"{len(held)} were already on the server" in second.stderr
    assert stored_sha256(user, job_id) == hashlib.sha256(data).hexdigest()


def test_upload_rides_out_a_server_restart(make_server: ServerFactory, tmp_path: Path) -> None:
    slow_server = make_server(CHUTE_CHUNK_SIZE=str(CHUNK))  # its own: it is killed
    user = slow_server.client()
    path, data = csv_file(tmp_path, 40_000, seed=2)
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    upload = subprocess.Popen(
        chute_command("upload", str(path), "--parallel", "2", "--limit-rate", "256K"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = only_job(user)
        wait_for_chunks(user, job_id, 3)
        slow_server.stop(kill=True)  # a crash, with chunks in flight
        time.sleep(1)
        slow_server.start(same_port=True)
        _, stderr = upload.communicate(timeout=120)
    finally:
        upload.kill()
    assert upload.returncode == 0, stderr
    assert "retried" in stderr
    assert "trying again in" in stderr
    assert stored_sha256(user, job_id) == hashlib.sha256(data).hexdigest()


def test_a_file_the_server_would_refuse_is_refused_before_a_byte_is_sent(
    slow_server: Server, tmp_path: Path
) -> None:
    user = slow_server.client()
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x00\xff" * 100_000)
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    result = run_chute(env, "upload", str(path))
    assert result.returncode == 1
    # The server's own check, with its words, run on chunk 0 before it is sent.
    assert "is not a CSV file the server takes" in result.stderr
    assert "does not look like a CSV file" in result.stderr
    assert "Traceback" not in result.stderr
    job_id = only_job(user)
    assert chunk_posts(slow_server.log(), job_id, None) == 0


def test_a_refused_chunk_shows_the_detail_and_fails(slow_server: Server, tmp_path: Path) -> None:
    """A 4xx answer to a chunk (the job was cancelled meanwhile, from the page, say)
    ends the command with the server's detail; the refused chunk is not sent again."""
    user = slow_server.client()
    path, _ = csv_file(tmp_path, 40_000, seed=7)
    env = user_env(slow_server, tmp_path / "home", token_of(user))
    upload = subprocess.Popen(
        chute_command("upload", str(path), "--parallel", "1", "--limit-rate", "256K"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = only_job(user)
        wait_for_chunks(user, job_id, 2)
        assert user.http.post(f"/api/job/{job_id}/cancel").status_code == 200
        _, stderr = upload.communicate(timeout=60)
    finally:
        upload.kill()
    assert upload.returncode == 1, stderr
    assert "HTTP 409" in stderr
    assert "Traceback" not in stderr
    assert chunk_posts(slow_server.log(), job_id, 409) == 1


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["upload", "{missing}"], 2, "no such file"),
        (["upload", "{dir}"], 2, "not a regular file"),
        (["upload", "{file}", "--chunk-size", "lots"], 2, "is not a size"),
        (["upload", "{file}", "--chunk-size", "0"], 2, "less than one byte"),
        (["upload", "{file}", "--chunk-size", "1G"], 1, "over the server's limit"),
        (["upload", "{file}", "--parallel", "0"], 2, "not a number from 1 to 32"),
        (["upload", "{file}", "--job", "987654"], 1, "Job not found."),
        (["upload", "{file}", "--job", "x"], 2, "not a job id"),
        (["status", "987654"], 1, "Job not found."),
    ],
)
def test_bad_input_gets_a_clear_error(
    server: Server,
    signed_in_env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    code: int,
    words: str,
) -> None:
    path, _ = csv_file(tmp_path, 100)
    places = {"missing": str(tmp_path / "nope.csv"), "dir": str(tmp_path), "file": str(path)}
    env = signed_in_env
    result = run_chute(env, *(arg.format(**places) for arg in args))
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_login_stores_a_private_token_and_the_environment_wins(
    server: Server, tmp_path: Path
) -> None:
    name = server.add_user(password="login-pw")
    env = user_env(server, tmp_path / "home")
    not_yet = run_chute(env, "jobs")
    assert not_yet.returncode == 1 and "not signed in" in not_yet.stderr

    login = run_chute(env, "login", "--user", name, stdin="login-pw\n")
    assert login.returncode == 0, login.stderr
    stored = tmp_path / "home" / ".config" / "chute" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "login-pw" not in stored.read_text()
    assert run_chute(env, "jobs").returncode == 0

    # CHUTE_TOKEN overrides the stored token.
    bad = run_chute({**env, "CHUTE_TOKEN": "not-a-token"}, "jobs")
    assert bad.returncode == 1 and "Not signed in." in bad.stderr
    # The last login's server is the default once CHUTE_SERVER is gone.
    without = {k: v for k, v in env.items() if k != "CHUTE_SERVER"}
    assert run_chute(without, "jobs").returncode == 0

    wrong = run_chute(env, "login", "--user", name, stdin="nope\n")
    assert wrong.returncode == 1 and "Wrong user name or password." in wrong.stderr


def test_a_changed_file_gets_a_new_job(server: Server, tmp_path: Path) -> None:
    user = server.client()
    path, _ = csv_file(tmp_path, 500, seed=3)
    env = user_env(server, tmp_path / "home", token_of(user))
    assert run_chute(env, "upload", str(path)).returncode == 0
    path.write_bytes(csv_bytes(600, seed=4))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = run_chute(env, "upload", str(path))
    assert second.returncode == 0, second.stderr
    assert "new" in second.stderr
    assert len(user.http.get("/api/job").json()["items"]) == 2


MARKUP = "[bold red]x[/]"


def _no_control_characters(output: str) -> None:
    bad = sorted({hex(ord(c)) for c in output if c != "\n" and unicodedata.category(c) == "Cc"})
    assert not bad, f"control characters reach the terminal: {bad}\n{output!r}"


def test_the_servers_data_never_drives_the_terminal(server: Server, tmp_path: Path) -> None:
    """Names, values, column names, rejected rows and errors with escape sequences and
    rich markup are printed as visible text: nothing the terminal would act on."""
    user = server.client()
    data = (
        f'id,"col{HOSTILE}{MARKUP}",amount\n'
        f'1,"{HOSTILE}{MARKUP}",2.5\n'
        f"2,plain,3.5\n"
        f'3,"{HOSTILE}",4.5,"{HOSTILE}extra"\n'  # one field too many: a rejected row
    ).encode()
    job_id = user.new_job("hostile")
    user.upload(job_id, data)
    assert user.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    server.write_job(job_id, name=f"{HOSTILE}{MARKUP}name")
    failed_id = user.new_job("broken")
    server.write_job(failed_id, status="failed", error=f"{HOSTILE}{MARKUP}bad")
    env = user_env(server, tmp_path / "home", token_of(user))

    for args in (
        ("jobs",),
        ("status", str(job_id)),
        ("status", str(job_id), "--wait"),
        ("status", str(failed_id)),
        ("status", str(failed_id), "--wait"),
    ):
        result = run_chute(env, *args)
        assert result.returncode in (0, 1), result.stderr
        _no_control_characters(result.stdout)
        _no_control_characters(result.stderr)
        # The escape shows as text, and the markup as written: rich did not read it.
        assert "\\x1b]0;pwned\\x07\\x1b[2J" in result.stdout, (args, result.stdout)
        assert MARKUP in result.stdout, (args, result.stdout)
    shown = run_chute(env, "status", str(job_id)).stdout
    assert f"\\x1b]0;pwned\\x07\\x1b[2J{MARKUP}name" in shown
    assert f"col\\x1b]0;pwned\\x07\\x1b[2J{MARKUP}" in shown  # a column's name
    assert shown.count("\\x1b]0;pwned") >= 4  # name, column, value, rejected row


class _Rule:
    """A faulty proxy's rule from a dict: chunk request n → verdict, else pass."""

    def __init__(self, verdicts: dict[int, Verdict]) -> None:
        self.verdicts = verdicts

    def __call__(self, n: int) -> Verdict:
        return self.verdicts.get(n, PASS)


def test_upload_rides_out_423_and_a_stalled_chunk(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """A chunk held (423 with Retry-After), then the same chunk stalled mid-body: `chute
    upload` waits as told, cuts the stalled request off after --stall-timeout, sends it
    again and finishes."""
    chunk = 8 * 1024 * KiB  # more than the kernel buffers: a stalled body blocks its writes
    server = make_server(CHUTE_CHUNK_SIZE=str(chunk), CHUTE_MAX_CHUNK_BYTES=str(2 * chunk))
    user = server.client()
    data = csv_of_size(chunk + 64 * KiB, seed=4)
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    rule = _Rule({0: Answer(423, retry_after=1, detail="Chunk 0 is held."), 1: STALL})
    with FaultyProxy(("127.0.0.1", server.port), rule) as proxy:
        env = {**user_env(server, tmp_path / "home", token_of(user)), "CHUTE_SERVER": proxy.url}
        result = run_chute(
            env,
            "upload",
            str(path),
            "--new",
            "held",
            "--parallel",
            "1",
            "--stall-timeout",
            "1",
        )
        seen = proxy.chunk_requests()
    assert result.returncode == 0, result.stderr
    assert "Chunk 0 is held. (HTTP 423)" in result.stderr
    assert "2 retried" in result.stderr
    assert [s.verdict for s in seen] == [rule.verdicts[0], STALL, PASS, PASS]
    assert [s.index for s in seen[:3]] == [0, 0, 0]
    # The proxy notes an answer once it has handed it to the kernel, which the client may
    # read a moment before that: 50 ms of slack, against the 1 s it must wait.
    assert seen[0].answered_at is not None and seen[1].at - seen[0].answered_at >= 0.95
    assert seen[2].at - seen[1].at >= 1.0
    job_id = only_job(user)
    assert stored_sha256(user, job_id) == hashlib.sha256(data).hexdigest()


def test_a_stall_timeout_must_be_a_number_of_seconds(signed_in_env: dict[str, str]) -> None:
    for bad in ("0", "-1", "soon", "inf", "nan"):
        result = run_chute(signed_in_env, "upload", "x.csv", "--stall-timeout", bad)
        assert result.returncode == 2
        assert "not a number of seconds" in result.stderr
