"""The first admin, made by the first `chute serve` (or `chute migrate`) on an empty database.

Its password is printed only to a terminal. Under a supervisor (stdout to a file or a
pipe, as in these tests) it goes to a 0600 file in the data dir, and the log says where,
never what: a log is read by others and kept for long.
"""

from __future__ import annotations

import os
import pty
import re
import select
import stat
import subprocess
import sys

import httpx

from tests.conftest import Server, ServerFactory

ADMIN_LINE = re.compile(r"Created user 'admin' with password: (\S+)")
FILE = "initial-admin-password"


def sign_in(server: Server, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post("/api/auth/token", data={"username": username, "password": password})


def test_first_serve_writes_the_password_to_a_0600_file_and_logs_only_where(
    server: Server, make_server: ServerFactory
) -> None:
    srv = make_server()
    path = srv.data_dir / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16
    log = srv.log()
    assert password not in log
    assert not ADMIN_LINE.search(log), log
    assert f"Created user 'admin'. Its password is in {path} on " in log, log
    assert sign_in(srv, "admin", password).status_code == 200
    # Random per data dir: the module's other server has its own.
    assert (server.data_dir / FILE).read_text().strip() != password
    # No other file of the password is left beside it.
    assert [p.name for p in srv.data_dir.iterdir() if "admin-password" in p.name] == [FILE]

    srv.stop()
    srv.start()  # the same data dir, a new port and so a new log file
    second_log = srv.log()
    assert "Application startup complete" in second_log
    assert "admin" not in second_log
    # The password was not replaced, nor its file rewritten.
    assert path.read_text().strip() == password
    assert sign_in(srv, "admin", password).status_code == 200


def run_on_a_terminal(server: Server, *args: str) -> tuple[int, str]:
    """`chute ARGS` with its stdout on a pseudo-terminal, as an operator runs it."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "chute", *args],
            env=server.env,
            stdout=follower,
            stderr=subprocess.STDOUT,
            cwd=server.data_dir.parent,
        )
        os.close(follower)
        output = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            assert ready, f"no output in 60 s: {output!r}"
            try:
                piece = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed, the process ended
                break
            if not piece:
                break
            output += piece
        return process.wait(timeout=60), output.decode(errors="replace")
    finally:
        os.close(leader)


def test_a_terminal_is_shown_the_password_and_no_file_is_written(
    make_server: ServerFactory,
) -> None:
    srv = make_server(start=False)
    code, output = run_on_a_terminal(srv, "migrate")
    assert code == 0, output
    found = ADMIN_LINE.findall(output)
    assert len(found) == 1, output
    assert "It is shown only this once." in output
    assert not (srv.data_dir / FILE).exists()
    srv.start()
    assert not ADMIN_LINE.search(srv.log())
    assert sign_in(srv, "admin", found[0]).status_code == 200


def test_no_admin_when_users_exist_before_the_first_serve(make_server: ServerFactory) -> None:
    srv = make_server(start=False)
    added = srv.cli("user", "add", "owner", stdin="owner-pw\n")
    assert added.returncode == 0, added.stderr
    srv.start()
    assert "admin" not in srv.log(), srv.log()
    assert not (srv.data_dir / FILE).exists()
    assert sign_in(srv, "owner", "owner-pw").status_code == 200


def test_a_password_that_cannot_be_kept_creates_no_admin(make_server: ServerFactory) -> None:
    srv = make_server(start=False)
    (srv.data_dir / FILE).mkdir(parents=True)  # in the way of the file
    result = srv.cli("migrate")
    assert result.returncode != 0
    assert f"could not write the first admin's password to {srv.data_dir / FILE}" in (result.stderr)
    assert "no user was created" in result.stderr
    assert "Traceback" not in result.stderr
    assert srv.sql("SELECT count(*) FROM users") == [(0,)]
    # Once the way is clear, the next start makes the admin.
    (srv.data_dir / FILE).rmdir()
    srv.start()
    password = (srv.data_dir / FILE).read_text().strip()
    assert sign_in(srv, "admin", password).status_code == 200
