"""Identity from the host application's OpenID Connect provider, end to end (DESIGN §7).

A real provider (`oidc-provider`, tests/auth/oidc_provider.mjs) issues JWT access tokens
through the client credentials grant; a real `chute serve` is configured with its issuer.
Tokens the provider would never issue (unsigned, HMAC, signed by a stranger's key) are
made here with joserfc. The rules one by one are in test_oidc_tokens.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import RSAKey

from tests.auth.provider import (
    AUDIENCE,
    OTHER_AUDIENCE,
    Provider,
    key_set,
    oidc_settings,
    provider_running,
    require_provider,
)
from tests.conftest import EMBEDDED, Client, Server, serving
from tests.factories import csv_bytes, sha256

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module", autouse=True)
def provider_installed() -> None:
    require_provider()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with provider_running(tmp_path_factory.mktemp("oidc")) as running:
        yield running


@pytest.fixture(scope="module")
def chute(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[Server]:
    """A Chute that takes the module provider's tokens."""
    with serving(
        tmp_path_factory.mktemp("chute-oidc"), EMBEDDED, **oidc_settings(provider)
    ) as server:
        yield server


def bearer(server: Server, token: str) -> httpx.Client:
    http = httpx.Client(
        base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {token}"}
    )
    server._clients.append(http)
    return http


def me(server: Server, token: str) -> httpx.Response:
    return bearer(server, token).get("/api/auth/me")


def refused(server: Server, token: str) -> str:
    """The words of a 401 for this token, which must be all the answer says."""
    answer = me(server, token)
    assert answer.status_code == 401, answer.text
    body = answer.json()
    assert list(body) == ["detail"]
    detail: str = body["detail"]
    return detail


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(provider: Provider, **changes: Any) -> dict[str, Any]:
    """Claims the provider's token for alice-app would hold (for tokens made here)."""
    now = int(time.time())
    iss, sub = provider.issuer, "alice-app"
    return {"iss": iss, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300, **changes}


def signed_by(key: RSAKey, payload: dict[str, Any], kid: str | None = None) -> str:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid or key.kid}
    return jws.serialize_compact(header, json.dumps(payload), key, algorithms=["RS256"])


def user_rows(server: Server, subject: str) -> list[Any]:
    return server.sql(
        "SELECT id, username, oidc_issuer, password_hash FROM users WHERE oidc_subject = :s"
        " ORDER BY id",
        s=subject,
    )


def test_a_provider_token_signs_in_and_uploads_through_the_chunk_endpoint(
    chute: Server, provider: Provider
) -> None:
    token = provider.token("alice-app")
    assert token.count(".") == 2
    answer = me(chute, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == "alice"
    [(user_id, username, issuer, password_hash)] = user_rows(chute, "alice-app")
    assert (username, issuer, password_hash) == ("alice", provider.issuer, "")

    client = Client(bearer(chute, token), "alice", chute.data_dir, chute.env, chute.chunk)
    data = csv_bytes(3000)
    job_id = client.new_job("from the application")
    client.upload(job_id, data, chunk_size=20_000)
    job = client.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert job["result"]["rows"] == 3000
    assert client.stored(job_id) == (len(data), sha256(data))
    # A new token of the same subject is the same user, not a second one.
    assert me(chute, provider.token("alice-app")).json()["id"] == user_id
    assert len(user_rows(chute, "alice-app")) == 1
    # No password signs the provider's user in.
    answer = httpx.post(
        f"{chute.url}/api/auth/token", data={"username": "alice", "password": "anything"}
    )
    assert answer.status_code == 401


def test_tus_and_the_jobs_api_take_the_same_token(chute: Server, provider: Provider) -> None:
    http = bearer(chute, provider.token("alice-app"))
    data = csv_bytes(500)
    name = base64.b64encode(b"tus from the application").decode()
    answer = http.post(
        "/api/tus/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"name {name}"},
    )
    assert answer.status_code == 201, answer.text
    url, job_id = answer.headers["Location"], answer.headers["Chute-Job-Id"]
    answer = http.patch(
        url,
        content=data,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
    )
    assert answer.status_code == 204, answer.text
    assert http.head(url, headers=TUS).headers["Upload-Offset"] == str(len(data))
    assert http.get(f"/api/job/{job_id}").status_code == 200
    assert int(job_id) in [job["id"] for job in http.get("/api/job").json()["items"]]

    stranger = bearer(chute, provider.token("alice-app", OTHER_AUDIENCE))
    for answer in (
        stranger.post("/api/tus/", headers={**TUS, "Upload-Length": "10"}),
        stranger.head(url, headers=TUS),
        stranger.get(f"/api/job/{job_id}"),
        stranger.post(f"/api/job/{job_id}/upload-data", files={"file": ("a.csv", b"a\n")}),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    ("client", "name"), [("bob-app", "bob"), ("carol-app", "carol-app")], ids=["ES256", "EdDSA"]
)
def test_each_algorithm_signs_in_and_a_token_without_a_name_uses_the_subject(
    chute: Server, provider: Provider, client: str, name: str
) -> None:
    answer = me(chute, provider.token(client))
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == name


def test_a_name_already_taken_gets_a_suffix(chute: Server, provider: Provider) -> None:
    chute.add_user("dave")  # a local user, before the provider's dave is first seen
    assert me(chute, provider.token("dave-app")).json()["username"] == "dave-2"
    assert [row[1] for row in user_rows(chute, "dave-app")] == ["dave-2"]


def test_a_token_for_another_audience_is_refused_and_creates_no_user(
    chute: Server, provider: Provider
) -> None:
    token = provider.token("carol-app", OTHER_AUDIENCE)
    users = chute.sql("SELECT count(*) FROM users")
    assert refused(chute, token) == (
        "The bearer token was refused: it is meant for another audience."
    )
    assert chute.sql("SELECT count(*) FROM users") == users


def test_expired_and_not_yet_valid_tokens_are_refused(chute: Server, provider: Provider) -> None:
    assert refused(chute, provider.token("late-app")).endswith("it has expired.")
    assert refused(chute, provider.token("early-app")).endswith("it is not valid yet.")
    assert user_rows(chute, "late-app") == user_rows(chute, "early-app") == []


def test_a_key_the_provider_never_published_is_refused(chute: Server, provider: Provider) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    assert refused(chute, signed_by(stranger, claims(provider))) == (
        "The bearer token was refused: it is not signed with a key its identity provider publishes."
    )
    # A published key id does not help: the signature is checked with the published key.
    impostor = RSAKey.generate_key(2048, parameters={"kid": "first-rsa"})
    assert refused(chute, signed_by(impostor, claims(provider))).endswith(
        "its signature does not verify."
    )


def test_unsigned_and_hmac_forgeries_are_refused(chute: Server, provider: Provider) -> None:
    payload = b64(json.dumps(claims(provider)).encode())
    unsigned = b64(json.dumps({"alg": "none", "kid": "first-rsa"}).encode())
    assert "algorithm is not accepted" in refused(chute, f"{unsigned}.{payload}.")
    # HS256 keyed with the provider's published RSA key, as a careless verifier would take.
    jwks = httpx.get(f"{provider.issuer}/jwks").json()["keys"]
    public = RSAKey.import_key(next(k for k in jwks if k["kty"] == "RSA")).as_pem()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "first-rsa"}).encode())
    mac = hmac.new(public, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert "algorithm is not accepted" in refused(chute, f"{head}.{payload}.{b64(mac)}")


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("garbage", "Not signed in."),
        ("x" * 5000, "Not signed in."),
        ("a.b.c", "The bearer token was refused: it is not a well-formed token."),
        # Well-formed base64 and JSON, but a header without an algorithm.
        ("e30.e30.e30", "The bearer token was refused: it is not a well-formed token."),
    ],
)
def test_a_garbage_bearer_is_refused_plainly(chute: Server, value: str, detail: str) -> None:
    assert refused(chute, value) == detail


def test_a_rotated_key_is_taken_without_restarting_chute(tmp_path: Path) -> None:
    with (
        provider_running(tmp_path, key_set("old")) as provider,
        serving(tmp_path, EMBEDDED, **oidc_settings(provider)) as server,
    ):
        old = provider.token("alice-app")
        assert me(server, old).status_code == 200
        provider.stop()
        provider.start(key_set("new"))  # same issuer, only new keys published
        new = provider.token("alice-app")
        assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == "new-rsa"
        time.sleep(1.1)  # CHUTE_OIDC_JWKS_MIN_INTERVAL since Chute's last fetch
        answer = me(server, new)
        assert answer.status_code == 200, answer.text
        assert answer.json()["username"] == "alice"
        # The provider no longer publishes the old key: its tokens stop working.
        assert "not signed with a key" in refused(server, old)


def test_while_the_provider_is_down_known_keys_keep_working(tmp_path: Path) -> None:
    with (
        provider_running(tmp_path) as provider,
        serving(
            tmp_path, EMBEDDED, **oidc_settings(provider, CHUTE_OIDC_JWKS_MAX_AGE="1")
        ) as server,
    ):
        token = provider.token("bob-app")
        assert me(server, token).status_code == 200
        provider.stop()
        time.sleep(1.2)  # the cached keys are now due for a refresh, which fails
        for _ in range(3):
            assert me(server, token).status_code == 200
        stranger = RSAKey.generate_key(2048, parameters={"kid": "new-kid"})
        started = time.monotonic()
        assert "not signed with a key" in refused(server, signed_by(stranger, claims(provider)))
        assert time.monotonic() - started < 5
        assert "fetch the keys" in server.log()
        # Back up with other keys: Chute follows without a restart.
        provider.start(key_set("after"))
        time.sleep(1.1)
        assert me(server, provider.token("bob-app")).status_code == 200


def test_unknown_key_ids_cost_the_provider_one_fetch_per_interval(
    tmp_path: Path, provider: Provider
) -> None:
    settings = oidc_settings(provider, CHUTE_OIDC_JWKS_MIN_INTERVAL="3")
    with serving(tmp_path, EMBEDDED, **settings) as server:
        assert me(server, provider.token("alice-app")).status_code == 200
        time.sleep(3.1)
        before = provider.key_fetches()
        stranger = RSAKey.generate_key(2048)
        started = time.monotonic()
        for index in range(20):
            token = signed_by(stranger, claims(provider), kid=f"random-{index}")
            assert "not signed with a key" in refused(server, token)
        intervals = (time.monotonic() - started) / 3
        # The first unknown key id fetched the keys again; the others waited their turn
        # (a very slow machine may see a second interval begin).
        assert 1 <= provider.key_fetches() - before <= 1 + int(intervals)


def test_another_issuer_with_the_same_subject_is_another_user(
    tmp_path: Path, provider: Provider
) -> None:
    (tmp_path / "second").mkdir()
    with provider_running(tmp_path / "second") as second:
        assert second.issuer != provider.issuer
        server = Server(
            data_dir=tmp_path / "data",
            env={
                **os.environ,
                "CHUTE_DATA_DIR": str(tmp_path / "data"),
                "CHUTE_MIN_FREE_BYTES": "0",
            },
        )
        try:
            server.env.update(oidc_settings(provider))
            server.start()
            first = me(server, provider.token("alice-app")).json()
            job = bearer(server, provider.token("alice-app")).post("/api/job", json={"name": "a"})
            assert job.status_code == 201
            server.stop()
            server.close_clients()
            # The same database, now trusting the second provider.
            server.env.update(oidc_settings(second))
            server.start()
            answer = me(server, second.token("alice-app"))
            assert answer.status_code == 200, answer.text
            other = answer.json()
            assert other["id"] != first["id"]
            assert (first["username"], other["username"]) == ("alice", "alice-2")
            rows = user_rows(server, "alice-app")
            assert [row[2] for row in rows] == [provider.issuer, second.issuer]
            http = bearer(server, second.token("alice-app"))
            assert http.get(f"/api/job/{job.json()['id']}").status_code == 404
            # The first provider's tokens are not taken by a Chute set to the second.
            assert refused(server, provider.token("alice-app")).startswith(
                "The bearer token was refused"
            )
            server.stop()
            server.close_clients()
            # Without an issuer, no JWT signs in, and none makes a user.
            for name in oidc_settings(second):
                del server.env[name]
            server.start()
            assert refused(server, second.token("carol-app")) == "Not signed in."
            assert user_rows(server, "carol-app") == []
        finally:
            server.close_clients()
            server.stop(kill=True)


def test_an_issuer_without_an_audience_does_not_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHUTE_DATA_DIR": str(tmp_path / "data"),
        "CHUTE_OIDC_ISSUER": "https://id.example.com",
    }
    env.pop("CHUTE_OIDC_AUDIENCE", None)
    done = subprocess.run(
        [sys.executable, "-m", "chute", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "CHUTE_OIDC_AUDIENCE must be set when CHUTE_OIDC_ISSUER is" in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_disabled_users_provider_tokens_are_refused_until_enabled(
    chute: Server, provider: Provider
) -> None:
    """A provider's token stays valid at the provider; Chute refuses it (403) while an
    admin has the user disabled, from the next request on."""
    token = provider.token("bob-app")
    answer = me(chute, token)
    assert answer.status_code == 200, answer.text
    name = answer.json()["username"]
    disabled = chute.cli("user", "disable", name)
    assert disabled.returncode == 0, disabled.stderr
    try:
        for answer in (me(chute, token), bearer(chute, token).get("/api/job")):
            assert answer.status_code == 403
            assert answer.json() == {"detail": "This user is disabled; ask an admin to enable it."}
        assert me(chute, provider.token("bob-app")).status_code == 403
    finally:
        enabled = chute.cli("user", "enable", name)
    assert enabled.returncode == 0, enabled.stderr
    assert me(chute, token).status_code == 200
