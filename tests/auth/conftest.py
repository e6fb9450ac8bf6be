"""What the identity and user tests share: a migrated database of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from chute.db.migrate import upgrade
from chute.db.session import make_engine, make_sessionmaker
from tests.conftest import postgres_database, require_services


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated SQLite file, or on a database of its own on the test
    PostgreSQL: the two behave apart where rows are locked and raced for."""

    def made(url: str) -> Iterator[sessionmaker[Session]]:
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
        engine.dispose()

    if request.param == "sqlite":
        yield from made(f"sqlite:///{tmp_path / 'chute.db'}")
        return
    require_services(redis=False)
    with postgres_database() as url:
        yield from made(url)
