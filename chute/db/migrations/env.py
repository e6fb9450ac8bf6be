"""Alembic environment: the same metadata and URL as the app (see chute.db.migrate)."""

from alembic import context
from sqlalchemy import text

from chute.db.models import Base
from chute.db.session import make_engine

# An arbitrary constant naming Chute's migration lock among PostgreSQL's advisory locks.
LOCK_KEY = 0x43687574_65000001

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "chute.db.migrate.alembic_config sets sqlalchemy.url"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A batch migration recreates a table on SQLite: copy, drop the old, rename.
            # With foreign keys on, the drop deletes every row that refers to the table
            # (ON DELETE CASCADE: a job's chunks, tokens...). Off for the migration, which
            # must be set outside a transaction, so on the driver's connection, before
            # SQLAlchemy begins one; checked again before the commit, below.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            # One transaction from reading the version to the last migration, on SQLite
            # too (Alembic's default there is one per migration, after reading the version
            # outside them, so two processes starting at once could both run the same
            # step). SQLite's DDL is transactional, and BEGIN IMMEDIATE serializes them.
            transactional_ddl=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Every `chute serve` and `chute worker` migrates at start, on any number of
                # hosts at once: one at a time, each reading the version the last one left.
                # (SQLite's BEGIN IMMEDIATE already runs them one at a time.)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            context.run_migrations()
            if sqlite:
                broken = connection.execute(text("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"a migration left rows naming missing rows: {broken}")
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    engine.dispose()
