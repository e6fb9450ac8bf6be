"""Alembic migrations build the schema of `chute.db.models`, and nothing else does."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

import chute
from chute.db.migrate import alembic_config, upgrade
from chute.db.models import Base
from chute.db.session import make_engine
from tests.conftest import postgres_database, require_services


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a database of its own on the test PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "chute.db"
        path.touch()
        yield f"sqlite:///{path}"
        return
    require_services(redis=False)
    with postgres_database() as url:
        yield url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    yield engine
    engine.dispose()


def head(url: str) -> str:
    revision = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert revision is not None
    return revision


def stamped(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema(engine: Engine) -> list[tuple[str, str]]:
    """Every table with its columns, keys and indexes, as the database describes them."""
    found = inspect(engine)
    return [
        (
            table,
            repr(
                (
                    [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                    found.get_pk_constraint(table),
                    found.get_foreign_keys(table),
                    found.get_indexes(table),
                    found.get_unique_constraints(table),
                )
            ),
        )
        for table in sorted(found.get_table_names())
    ]


def test_upgrade_creates_every_table_and_stamps_head(url: str, engine: Engine) -> None:
    assert inspect(engine).get_table_names() == []
    upgrade(url)
    tables = set(inspect(engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert stamped(engine) == head(url)


def test_upgrade_again_is_a_no_op(url: str, engine: Engine) -> None:
    upgrade(url)
    before = schema(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (username, password_hash, created_at)"
                " VALUES ('kept', 'x', '2024-01-01 00:00:00')"
            )
        )
    upgrade(url)
    assert schema(engine) == before
    assert stamped(engine) == head(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM users")).scalars().all() == ["kept"]


def test_migrated_database_matches_the_models(url: str, engine: Engine) -> None:
    upgrade(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_drift_would_be_seen(url: str, engine: Engine) -> None:
    """The comparison above is not blind: a column the migrations lack is reported."""
    upgrade(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN error"))
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d[0] for d in differences] == ["add_column"]
    assert differences[0][3].name == "error"


def test_downgrade_to_base_and_up_again(url: str, engine: Engine) -> None:
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert stamped(engine) is None
    upgrade(url)
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_migrations_started_at_once_run_one_after_another(url: str, engine: Engine) -> None:
    """Every `chute serve` and `chute worker` migrates at start, on many hosts at once."""
    # Processes, as in production: Alembic's context is global to a process.
    code = "import sys; from chute.db.migrate import upgrade; upgrade(sys.argv[1])"
    runs = [subprocess.Popen([sys.executable, "-c", code, url]) for _ in range(4)]
    assert [run.wait(timeout=60) for run in runs] == [0, 0, 0, 0]
    assert stamped(engine) == head(url)
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_the_package_never_calls_create_all() -> None:
    package = Path(chute.__file__).parent
    sources = list(package.rglob("*.py"))
    assert len(sources) > 20  # the search looked where the code is
    pattern = re.compile(r"\bcreate_all\b")
    offenders = [str(p.relative_to(package)) for p in sources if pattern.search(p.read_text())]
    assert offenders == []


def add_user_and_job(conn: Connection) -> None:
    """User 1 ('kept') and its job 7, as an older schema holds them."""
    conn.execute(
        text(
            "INSERT INTO users (id, username, password_hash, created_at)"
            " VALUES (1, 'kept', 'x', '2024-01-01 00:00:00')"
        )
    )
    conn.execute(
        text(
            "INSERT INTO jobs (id, user_id, name, kind, params, status, created_at,"
            " updated_at, attempts) VALUES (7, 1, 'j', 'profile', '{}', 'awaiting_upload',"
            " '2024-01-01 00:00:00', '2024-01-01 00:00:00', 0)"
        )
    )


def test_0007_keeps_every_user_with_their_jobs_and_tokens(url: str, engine: Engine) -> None:
    """0007 alters `users`; recreating it on SQLite (a batch migration) would delete every
    job and token with it (ON DELETE CASCADE), so it must alter the table in place."""
    command.upgrade(alembic_config(url), "0006")
    with engine.begin() as conn:
        add_user_and_job(conn)
        conn.execute(
            text(
                "INSERT INTO auth_tokens (user_id, kind, token_hash, created_at, expires_at)"
                " VALUES (1, 'bearer', 'h', '2024-01-01 00:00:00', '2099-01-01 00:00:00')"
            )
        )
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, user_id FROM jobs")).all() == [(7, 1)]
        assert conn.execute(text("SELECT count(*) FROM auth_tokens")).scalar() == 1
        user = conn.execute(text("SELECT username, oidc_issuer FROM users")).all()
        assert user == [("kept", None)]


def test_0006_keeps_the_chunks_of_unfinished_uploads(url: str, engine: Engine) -> None:
    """0006 recreates `uploads` on SQLite (a batch migration: a column becomes nullable);
    with foreign keys on, dropping the old table would delete every recorded chunk with
    it (ON DELETE CASCADE), losing the uploads in progress at an upgrade."""
    command.upgrade(alembic_config(url), "0005")
    with engine.begin() as conn:
        add_user_and_job(conn)
        conn.execute(
            text(
                "INSERT INTO uploads (job_id, storage_id, total_chunks, chunks_received,"
                " bytes_received, created_at, touched_at) VALUES (7, 's7', 3, 2, 20,"
                " '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            )
        )
        for index in (0, 1):
            conn.execute(
                text(
                    'INSERT INTO chunks (job_id, "index", size, sha256, placed, created_at)'
                    " VALUES (7, :index, 10, :sha, TRUE, '2024-01-01 00:00:00')"
                ),
                {"index": index, "sha": f"{index}" * 64},
            )
    upgrade(url)
    with engine.connect() as conn:
        chunks = conn.execute(text('SELECT job_id, "index" FROM chunks ORDER BY 2')).all()
        assert chunks == [(7, 0), (7, 1)]
        upload = conn.execute(text("SELECT total_chunks, protocol FROM uploads")).all()
        assert upload == [(3, "chunks")]


@pytest.mark.parametrize(
    ("names", "admins"),
    [(["bob", "admin", "carol"], ["admin"]), (["bob", "carol"], ["bob"]), ([], [])],
)
def test_0009_leaves_an_upgraded_database_an_admin(
    url: str, engine: Engine, names: list[str], admins: list[str]
) -> None:
    """The admin role is new in 0009: the `admin` the first serve made gets it, or, when
    nobody has that name, the oldest user; nobody else does."""
    command.upgrade(alembic_config(url), "0008")
    with engine.begin() as conn:
        for name in names:
            conn.execute(
                text(
                    "INSERT INTO users (username, password_hash, created_at)"
                    " VALUES (:name, 'x', '2024-01-01 00:00:00')"
                ),
                {"name": name},
            )
    upgrade(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT username FROM users WHERE is_admin ORDER BY id"))
        assert [row[0] for row in found] == admins
        disabled = conn.execute(text("SELECT count(*) FROM users WHERE disabled_at IS NOT NULL"))
        assert disabled.scalar() == 0
