"""The app in this process, on the in-memory storage: for route tests that need no real
server (what headers and fields answer), so they take milliseconds, not a server start.

Streaming, drops, timeouts, other processes and real storage stay with the real servers
of tests/conftest.py.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    # Starlette now prefers the httpx2 fork for its TestClient; httpx, pinned here, works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from chute.app import create_app
from chute.auth.service import add_user, issue_token
from chute.config import Settings
from chute.db.migrate import upgrade
from chute.db.models import TokenKind
from chute.runtime import Runtime
from chute.storage.memory import forget


@dataclass
class App:
    """The app, its settings, and a way to sign users in."""

    http: TestClient
    settings: Settings
    _users: int = field(default=0)

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.http.app.state.runtime  # type: ignore[attr-defined]
        return runtime

    def client(self) -> TestClient:
        """A client signed in as a new user, by bearer token."""
        self._users += 1
        with self.runtime.sessions() as session:
            user = add_user(session, f"user{self._users}", "pw-for-tests")
            token = issue_token(session, user, TokenKind.BEARER, 3600)
        signed_in = TestClient(self.http.app, base_url="http://testserver")
        signed_in.headers["Authorization"] = f"Bearer {token}"
        return signed_in


def app_in_process(data_dir: Path, **settings: object) -> Iterator[App]:
    """Run the app (its lifespan included) on SQLite under `data_dir` and a fresh
    in-memory store; yields it, and forgets the store after."""
    name = f"test-{secrets.token_hex(4)}"
    configured = Settings.model_validate(
        {"data_dir": data_dir, "storage_url": f"memory://{name}", **settings}
    )
    upgrade(configured.resolved_database_url)
    try:
        with TestClient(create_app(configured)) as http:
            yield App(http, configured)
    finally:
        forget(name)
