"""The `chute` command: `user add` and the admin that the first `serve` creates."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Server, ServerFactory

ADMIN_LINE = re.compile(r"Created user 'admin' with password: (\S+)")


def sign_in(server: Server, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post("/api/auth/token", data={"username": username, "password": password})


def test_user_add_reads_the_password_from_stdin(server: Server) -> None:
    result = server.cli("user", "add", "dora", stdin="s3cret with spaces\n")
    assert result.returncode == 0, result.stderr
    assert "dora" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    assert sign_in(server, "dora", "s3cret with spaces").status_code == 200
    assert sign_in(server, "dora", "s3cret").status_code == 401


def test_user_add_twice_fails_with_a_message(server: Server) -> None:
    assert server.cli("user", "add", "eve", stdin="first\n").returncode == 0
    again = server.cli("user", "add", "eve", stdin="second\n")
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    # The first password still holds; the second was not set.
    assert sign_in(server, "eve", "first").status_code == 200
    assert sign_in(server, "eve", "second").status_code == 401


def test_user_add_refuses_an_empty_password(server: Server) -> None:
    for stdin in ("\n", ""):
        result = server.cli("user", "add", "frank", stdin=stdin)
        assert result.returncode != 0
        assert "password" in result.stderr
        assert "Traceback" not in result.stderr
    # No user was made: the name is still free.
    assert server.cli("user", "add", "frank", stdin="now-a-real-one\n").returncode == 0
    assert sign_in(server, "frank", "now-a-real-one").status_code == 200


def test_user_add_refuses_a_blank_name(server: Server) -> None:
    result = server.cli("user", "add", "   ", stdin="pw\n")
    assert result.returncode != 0
    assert "name" in result.stderr
    assert "Traceback" not in result.stderr


def test_first_serve_prints_the_admin_password_once(
    server: Server, make_server: ServerFactory
) -> None:
    srv = make_server()
    found = ADMIN_LINE.findall(srv.log())
    assert len(found) == 1, srv.log()
    password = found[0]
    assert srv.log().count(password) == 1
    assert len(password) >= 16
    assert sign_in(srv, "admin", password).status_code == 200
    # Random per data dir: the module's other server has its own.
    assert ADMIN_LINE.findall(server.log()) not in ([], [password])

    srv.stop()
    srv.start()  # the same data dir, a new port and so a new log file
    second_log = srv.log()
    assert "Application startup complete" in second_log
    assert not ADMIN_LINE.search(second_log), second_log
    assert "admin" not in second_log
    # The password printed the first time still signs in: it was not replaced.
    assert sign_in(srv, "admin", password).status_code == 200


def test_no_admin_when_users_exist_before_the_first_serve(make_server: ServerFactory) -> None:
    srv = make_server(start=False)
    added = srv.cli("user", "add", "owner", stdin="owner-pw\n")
    assert added.returncode == 0, added.stderr
    srv.start()
    assert not ADMIN_LINE.search(srv.log()), srv.log()
    assert sign_in(srv, "owner", "owner-pw").status_code == 200
