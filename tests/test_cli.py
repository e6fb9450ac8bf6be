"""The `chute` command: `user add` (the first admin: tests/test_admin_password.py)."""

from __future__ import annotations

import httpx

from tests.conftest import Server


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
