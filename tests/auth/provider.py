"""A real OpenID Connect provider for the tests: oidc-provider from npm, run by Node with
`oidc_provider.mjs`, on a loopback port of its own (installed by `npm ci` here; make test)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
AUDIENCE = "https://chute.test"
OTHER_AUDIENCE = "https://other-app.test"
# The provider's clients: their id is the tokens' `sub`, `name` their preferred_username.
CLIENTS = [
    {"id": "alice-app", "secret": "alice-secret", "alg": "RS256", "name": "alice"},
    {"id": "bob-app", "secret": "bob-secret", "alg": "ES256", "name": "bob"},
    {"id": "carol-app", "secret": "carol-secret", "alg": "EdDSA"},
    {"id": "dave-app", "secret": "dave-secret", "alg": "EdDSA", "name": "dave"},
    {"id": "late-app", "secret": "late-secret", "alg": "RS256", "clock": "expired"},
    {"id": "early-app", "secret": "early-secret", "alg": "ES256", "clock": "future"},
]
SECRETS = {c["id"]: c["secret"] for c in CLIENTS}


def key_set(generation: str) -> list[dict[str, Any]]:
    """A private key of each type, with key ids of this generation."""
    keys: list[RSAKey | ECKey | OKPKey] = [
        RSAKey.generate_key(2048, parameters={"kid": f"{generation}-rsa"}),
        ECKey.generate_key("P-256", parameters={"kid": f"{generation}-ec"}),
        OKPKey.generate_key("Ed25519", parameters={"kid": f"{generation}-ed"}),
    ]
    return [dict(key.as_dict(private=True)) for key in keys]


def require_provider() -> None:
    """Skip (fail under CI) when oidc-provider is not installed."""
    if (HERE / "node_modules" / "oidc-provider").is_dir():
        return
    reason = "oidc-provider is not installed: `npm ci` in tests/auth (make test does)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass
class Provider:
    """A running oidc-provider on a loopback port of its own, kept across restarts."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Pages that sign people in (oidc_provider.mjs): {"id", "alg", "redirect_uris"}.
    browser_clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, keys: list[dict[str, Any]]) -> None:
        config = self.workdir / f"provider-{self.port}.json"
        config.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "keys": keys,
                    "resources": [AUDIENCE, OTHER_AUDIENCE],
                    "clients": CLIENTS,
                    "browser_clients": self.browser_clients,
                }
            )
        )
        with (self.workdir / f"provider-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["node", str(HERE / "oidc_provider.mjs"), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.issuer}/_test/counts", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"oidc-provider did not answer in 30 s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)

    def log(self) -> str:
        return (self.workdir / f"provider-{self.port}.log").read_text(errors="replace")

    def token(self, client: str = "alice-app", resource: str = AUDIENCE) -> str:
        answer = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource},
            auth=(client, SECRETS[client]),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token

    def key_fetches(self) -> int:
        counts: dict[str, int] = httpx.get(f"{self.issuer}/_test/counts", timeout=5).json()
        return counts.get("/jwks", 0)


@contextlib.contextmanager
def provider_running(
    workdir: Path,
    keys: list[dict[str, Any]] | None = None,
    browser_clients: list[dict[str, Any]] | None = None,
) -> Iterator[Provider]:
    provider = Provider(workdir, browser_clients=browser_clients or [])
    provider.start(keys or key_set("first"))
    try:
        yield provider
    finally:
        provider.stop()


def oidc_settings(provider: Provider, **more: str) -> dict[str, str]:
    return {
        "CHUTE_OIDC_ISSUER": provider.issuer,
        "CHUTE_OIDC_AUDIENCE": AUDIENCE,
        "CHUTE_OIDC_JWKS_MIN_INTERVAL": "1",
        **more,
    }
