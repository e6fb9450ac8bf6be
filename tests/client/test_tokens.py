"""API tokens from the user's side, against a real server: `chute token create|list|revoke`,
`chute upload` with an API token in CHUTE_TOKEN (and refused once it is revoked), and
the Python client's token calls and `Client.from_env`."""

from __future__ import annotations

from pathlib import Path

import pytest

from chute.auth.tokens import PREFIX
from chute.client import ApiError, Client
from tests.client_support import run_chute, user_env
from tests.conftest import Server
from tests.factories import csv_bytes

PASSWORD = "pw-for-tests"


def signed_in_home(server: Server, home: Path) -> tuple[str, dict[str, str]]:
    """A new user who ran `chute login`: its name and its shell's environment (no
    CHUTE_TOKEN: the stored token signs the commands in)."""
    name = server.add_user(password=PASSWORD)
    env = user_env(server, home)
    login = run_chute(env, "login", "--user", name, stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    return name, env


def test_a_pipeline_uploads_with_an_api_token_until_it_is_revoked(
    server: Server, tmp_path: Path
) -> None:
    _, env = signed_in_home(server, tmp_path / "home")
    made = run_chute(env, "token", "create", "nightly export", "--expires", "30")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert made.stdout == secret + "\n"
    assert secret.startswith(PREFIX) and len(secret) == len(PREFIX) + 43
    assert "will not be shown again" in made.stderr
    assert "nightly export" in made.stderr and "expires 20" in made.stderr

    listing = run_chute(env, "token", "list")
    assert listing.returncode == 0, listing.stderr
    assert "nightly export" in listing.stdout and secret not in listing.stdout
    [line] = [row for row in listing.stdout.splitlines() if "nightly export" in row]
    token_id = line.split()[0]
    assert line.rstrip().endswith("never")  # not used yet

    # The pipeline's shell: another home, no `chute login`, only the API token.
    pipeline = user_env(server, tmp_path / "ci-home", secret)
    data = csv_bytes(2_000)
    (tmp_path / "export.csv").write_bytes(data)
    upload = run_chute(pipeline, "upload", str(tmp_path / "export.csv"), "--wait")
    assert upload.returncode == 0, upload.stderr
    jobs = run_chute(env, "jobs")
    assert "export.csv" in jobs.stdout and "succeeded" in jobs.stdout

    used = run_chute(env, "token", "list")
    [line] = [row for row in used.stdout.splitlines() if "nightly export" in row]
    assert not line.rstrip().endswith("never") and line.rstrip().endswith("UTC")

    # A token cannot make a token; the CLI says why CHUTE_TOKEN matters here.
    successor = run_chute(pipeline, "token", "create", "successor")
    assert successor.returncode == 1
    assert successor.stdout == ""
    assert "cannot make API tokens" in successor.stderr and "unset it" in successor.stderr

    revoked = run_chute(env, "token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"API token {token_id} revoked" in revoked.stdout
    (tmp_path / "later.csv").write_bytes(csv_bytes(100, seed=1))
    refused = run_chute(pipeline, "upload", str(tmp_path / "later.csv"))
    assert refused.returncode == 1
    assert "The API token was refused" in refused.stderr
    assert "HTTP 401" in refused.stderr and "Check CHUTE_TOKEN" in refused.stderr
    again = run_chute(env, "token", "revoke", token_id)
    assert again.returncode == 1
    assert "API token not found. (HTTP 404)" in again.stderr
    assert "No API tokens." in run_chute(env, "token", "list").stdout


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["token", "create", "ci", "--expires", "0"], 2, "not a number from 1 to 3650"),
        (["token", "create", "ci", "--expires", "3651"], 2, "not a number from 1 to 3650"),
        (["token", "revoke", "abc"], 2, "not a token id"),
        (["token", "revoke", "0"], 2, "not a token id"),
        (["token", "create", "x" * 101], 1, "1 to 100 printable characters"),
        (["token", "create", "bad\x1b[2Jname"], 1, "1 to 100 printable characters"),
        (["token", "revoke", "999999"], 1, "API token not found"),
    ],
)
def test_bad_token_commands_are_refused_clearly(
    server: Server, tmp_path: Path, args: list[str], status: int, words: str
) -> None:
    _, env = signed_in_home(server, tmp_path / "home")
    result = run_chute(env, *args)
    assert result.returncode == status, result.stderr
    assert words in result.stderr
    assert "\x1b" not in result.stderr
    assert run_chute(env, "token", "list").stdout.strip() == "No API tokens."


def test_the_python_client_makes_uses_and_revokes_tokens(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = server.add_user(password=PASSWORD)
    (tmp_path / "sales.csv").write_bytes(csv_bytes(500))
    with Client.sign_in(server.url, name, PASSWORD) as person:
        made = person.create_api_token("notebook", expires_in_days=7)
        assert made.secret is not None and made.secret.startswith(PREFIX)
        assert made.expires_at is not None and not made.expired
        monkeypatch.setenv("CHUTE_TOKEN", made.secret)
        monkeypatch.setenv("CHUTE_SERVER", server.url)
        with Client.from_env() as script:
            assert script.me()["username"] == name
            job = script.submit(tmp_path / "sales.csv")
            assert job.status == "succeeded" and job.result is not None
            [listed] = script.api_tokens()
            assert listed.id == made.id and listed.secret is None
            assert listed.last_used_at is not None
            with pytest.raises(ApiError) as refused:
                script.create_api_token("successor")
            assert refused.value.status == 403
            person.revoke_api_token(made.id)
            with pytest.raises(ApiError) as gone:
                script.jobs()
            assert gone.value.status == 401 and "API token was refused" in gone.value.detail
        assert [j.id for j in person.jobs()] == [job.id]
        assert person.api_tokens() == []
        with pytest.raises(ApiError) as unknown:
            person.revoke_api_token(made.id)
        assert unknown.value.status == 404
    monkeypatch.delenv("CHUTE_TOKEN")
    with pytest.raises(Exception, match="CHUTE_TOKEN is not set"):
        Client.from_env()
