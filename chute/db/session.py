"""Engine and session factory, built from settings (never at import time).

Both databases run every transaction so that a conditional UPDATE (`... WHERE status
IN (...)`) is decided on the newest committed row, and its rowcount says whether this
transaction made the change:

- SQLite: each transaction takes the write lock up front (`BEGIN IMMEDIATE`), so
  writers run one after another.
- PostgreSQL: READ COMMITTED, set explicitly because the code relies on it. A row
  lock (`FOR UPDATE`, or an UPDATE) waits for the transaction holding it, then
  re-checks its WHERE clause on the row as that transaction left it: of two
  concurrent `queued -> running` updates one matches and the other finds no row.
  (Under REPEATABLE READ the second would fail with a serialization error instead.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL's "try the transaction again" errors: serialization_failure, deadlock_detected.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql"):
        return create_engine(
            url,
            isolation_level="READ COMMITTED",
            pool_pre_ping=True,
            # The API's blocking work runs on up to 64 threads; most hold a connection
            # only for one short transaction.
            pool_size=10,
            max_overflow=20,
        )
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed chunk row survives a power loss, as the bytes it names do.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction that reads then
        # writes never fails half-way on a snapshot another writer moved on from.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_transient(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back, and running
    it again from the start is safe."""
    if not isinstance(exc, DBAPIError):
        return False
    return getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES


def in_transaction(
    sessions: sessionmaker[Session], fn: Callable[..., T], *args: Any, attempts: int = 5
) -> T:
    """`fn(session, *args)` in a session of its own, run again after a transient error.

    `fn` must be one transaction that commits (or raises) and has no effect outside the
    database before its commit, so a second run starts from a clean slate.
    """
    for attempt in range(1, attempts + 1):
        try:
            with sessions() as session:
                return fn(session, *args)
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("transaction rolled back (%s); trying again", exc.orig)
            time.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")
