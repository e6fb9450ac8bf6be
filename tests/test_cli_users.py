"""`chute user list|add|disable|enable|delete|passwd` on the server host, against the
database and storage of a real `chute serve`."""

from __future__ import annotations

import secrets
import subprocess

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import Server, ServerFactory, storage_holds
from tests.factories import csv_bytes

FIRST_ADMIN_FILE = "initial-admin-password"


def token(server: Server, name: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post("/api/auth/token", data={"username": name, "password": password})


def me(server: Server, bearer: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.get("/api/auth/me", headers={"Authorization": f"Bearer {bearer}"})


def signed_in(server: Server, name: str, password: str) -> str:
    answer = token(server, name, password)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def listing(server: Server) -> dict[str, list[str]]:
    result = server.cli("user", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "STATE", "CREATED"]
    return {line.split()[1]: line.split()[2:4] for line in lines[1:]}


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    stderr = result.stderr
    assert words in stderr, stderr
    assert "Traceback" not in stderr


def test_the_first_admin_of_serve_is_an_admin(server: Server) -> None:
    password = (server.data_dir / FIRST_ADMIN_FILE).read_text().strip()
    bearer = signed_in(server, "admin", password)
    assert me(server, bearer).json()["is_admin"] is True
    with httpx.Client(base_url=server.url, timeout=30) as http:
        users = http.get("/api/users", headers={"Authorization": f"Bearer {bearer}"})
    assert users.status_code == 200
    assert listing(server)["admin"] == ["admin", "enabled"]


def test_add_an_admin_and_a_user_and_list_them(server: Server) -> None:
    boss, worker = f"boss-{secrets.token_hex(3)}", f"worker-{secrets.token_hex(3)}"
    added = server.cli("user", "add", boss, "--admin", stdin="boss pw\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"Created admin {boss!r}."
    assert server.cli("user", "add", worker, stdin="worker pw\n").returncode == 0
    assert me(server, signed_in(server, boss, "boss pw")).json()["is_admin"] is True
    assert me(server, signed_in(server, worker, "worker pw")).json()["is_admin"] is False
    users = listing(server)
    assert users[boss] == ["admin", "enabled"] and users[worker] == ["user", "enabled"]


def test_disable_and_enable(server: Server) -> None:
    name = f"dave-{secrets.token_hex(3)}"
    assert server.cli("user", "add", name, stdin="dave pw\n").returncode == 0
    bearer = signed_in(server, name, "dave pw")
    result = server.cli("user", "disable", name)
    assert result.returncode == 0, result.stderr
    assert "Disabled" in result.stdout
    assert me(server, bearer).status_code == 401
    assert token(server, name, "dave pw").status_code == 403
    assert listing(server)[name] == ["user", "disabled"]
    result = server.cli("user", "enable", name)
    assert result.returncode == 0, result.stderr
    assert listing(server)[name] == ["user", "enabled"]
    assert token(server, name, "dave pw").status_code == 200
    assert me(server, bearer).status_code == 401  # the old token stays dead


def test_unknown_users_and_bad_names_are_refused_plainly(server: Server) -> None:
    for command in ("disable", "enable", "passwd"):
        refused(server.cli("user", command, "nobody-here", stdin="pw\n"), "no user 'nobody-here'")
    refused(server.cli("user", "delete", "nobody-here", "--yes"), "no user 'nobody-here'")
    result = server.cli("user", "add", "evil\x1b[2Jname", stdin="pw\n")
    refused(result, "printable characters")
    assert "\x1b" not in result.stdout + result.stderr
    refused(server.cli("user", "disable", "evil\x1b[2Jname"), "no user 'evil\\x1b[2Jname'")
    refused(server.cli("user", "add", "n" * 101, stdin="pw\n"), "1 to 100 printable")


def test_the_last_enabled_admin_stays(make_server: ServerFactory) -> None:
    server = make_server()
    refused(server.cli("user", "disable", "admin"), "last enabled admin")
    refused(server.cli("user", "delete", "admin", "--yes"), "last enabled admin")
    assert listing(server)["admin"] == ["admin", "enabled"]
    assert server.cli("user", "add", "second", "--admin", stdin="pw\n").returncode == 0
    assert server.cli("user", "disable", "admin").returncode == 0
    refused(server.cli("user", "disable", "second"), "last enabled admin")
    assert server.cli("user", "enable", "admin").returncode == 0
    result = server.cli("user", "role", "second", "user")
    assert (result.returncode, result.stdout.strip()) == (0, "'second' is now a user.")
    refused(server.cli("user", "role", "admin", "user"), "last enabled admin")
    assert server.cli("user", "role", "second", "admin").returncode == 0
    assert listing(server)["second"] == ["admin", "enabled"]
    assert server.cli("user", "delete", "second", "--yes").returncode == 0
    assert set(listing(server)) == {"admin"}


def test_delete_needs_yes_then_removes_jobs_and_files(server: Server) -> None:
    erin = server.client()
    job_id = erin.new_job("erin's")
    erin.upload(job_id, csv_bytes(200))
    erin.wait_for(job_id, "succeeded")
    unfinished = erin.new_job("unfinished")
    data = csv_bytes(5000)
    assert erin.send_chunk(unfinished, 0, 2, data[: server.chunk]).status_code == 200
    held = {
        r[0] for r in server.sql("SELECT storage_id FROM uploads WHERE job_id = :j", j=unfinished)
    }
    assert held <= set(storage_holds(server).uploads)
    assert any(f.startswith(f"jobs/{job_id}/") for f in storage_holds(server).files)

    result = server.cli("user", "delete", erin.username)
    refused(result, "--yes")
    assert erin.http.get("/api/job").status_code == 200  # nothing happened

    result = server.cli("user", "delete", erin.username, "--yes")
    assert result.returncode == 0, result.stderr
    assert f"Deleted {erin.username!r} and its 2 jobs" in result.stdout
    holds = storage_holds(server)
    assert not any(f.startswith((f"jobs/{job_id}/", f"jobs/{unfinished}/")) for f in holds.files)
    assert not held & set(holds.uploads)
    assert erin.http.get("/api/job").status_code == 401
    assert erin.username not in listing(server)


def test_passwd_sets_a_new_password_and_ends_sessions(server: Server) -> None:
    name = f"fay-{secrets.token_hex(3)}"
    assert server.cli("user", "add", name, stdin="old pw\n").returncode == 0
    bearer = signed_in(server, name, "old pw")
    result = server.cli("user", "passwd", name, stdin="new pw\n")
    assert result.returncode == 0, result.stderr
    assert "new pw" not in result.stdout + result.stderr
    assert me(server, bearer).status_code == 401
    assert token(server, name, "old pw").status_code == 401
    assert token(server, name, "new pw").status_code == 200
    refused(server.cli("user", "passwd", name, stdin="\n"), "password: must not be empty")
    assert token(server, name, "new pw").status_code == 200


def test_list_escapes_names_an_older_server_stored(server: Server) -> None:
    """Names are checked when made; one written by other means is still printed safely."""
    name = f"old-{secrets.token_hex(3)}"
    assert server.cli("user", "add", name, stdin="pw\n").returncode == 0
    engine = create_engine(server.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE users SET username = :new WHERE username = :old"),
                {"new": f"{name}\x1b]0;pwned\x07", "old": name},
            )
    finally:
        engine.dispose()
    result = server.cli("user", "list")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert f"{name}\\x1b]0;pwned\\x07" in result.stdout
