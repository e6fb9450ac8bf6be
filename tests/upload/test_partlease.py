"""Part leases in a real database: one holder at a time, renewed while held, taken over
when their holder stopped, deleted when released."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from chute.db.migrate import upgrade
from chute.db.models import PartLease, utcnow
from chute.db.session import make_engine, make_sessionmaker
from chute.upload.partlease import PartLeases
from tests.conftest import postgres_database, require_services


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'chute.db'}"
        else:
            require_services(redis=False)
            url = stack.enter_context(postgres_database())
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
        engine.dispose()


def rows(sessions: sessionmaker[Session]) -> list[tuple[str, int, str]]:
    with sessions() as session:
        return [(r.storage_id, r.index, r.holder) for r in session.scalars(select(PartLease))]


def test_one_holder_at_a_time_and_the_next_gets_it_on_release(
    sessions: sessionmaker[Session],
) -> None:
    leases = PartLeases(sessions, lease_seconds=30)
    order: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait()
        with leases.lock_part("u1", 3, timeout=10):
            order.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with leases.lock_part("u1", 3, timeout=1) as lease:
        first_in.set()
        assert rows(sessions) == [("u1", 3, lease.holder)]
        time.sleep(0.3)  # the second waits meanwhile
        order.append("first out")
    thread.join()
    assert order == ["first out", "second in"]
    assert rows(sessions) == []


def test_other_parts_and_uploads_do_not_wait(sessions: sessionmaker[Session]) -> None:
    leases = PartLeases(sessions, lease_seconds=30)
    with (
        leases.lock_part("u1", 0, timeout=1),
        leases.lock_part("u1", 1, timeout=0.1),
        leases.lock_part("u2", 0, timeout=0.1),
    ):
        assert len(rows(sessions)) == 3


def test_a_held_lease_times_out_the_waiter(sessions: sessionmaker[Session]) -> None:
    leases = PartLeases(sessions, lease_seconds=30)
    with leases.lock_part("u1", 0, timeout=1):
        started = time.monotonic()
        with pytest.raises(TimeoutError), leases.lock_part("u1", 0, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3


def test_renewal_keeps_a_long_request_s_lease(sessions: sessionmaker[Session]) -> None:
    leases = PartLeases(sessions, lease_seconds=0.6)  # renewed every 0.2 s
    with leases.lock_part("u1", 0, timeout=1) as lease:
        time.sleep(1.5)  # longer than the lease: only renewal keeps it
        with pytest.raises(TimeoutError), leases.lock_part("u1", 0, timeout=0.2):
            pass
        assert not lease.lost.is_set()


def test_a_stale_lease_is_taken_over_and_its_holder_learns_it_lost(
    sessions: sessionmaker[Session],
) -> None:
    leases = PartLeases(sessions, lease_seconds=30)
    with leases.lock_part("u1", 0, timeout=1) as dead:
        # As if its process had stopped renewing long ago.
        with sessions() as session:
            session.execute(update(PartLease).values(renewed_at=utcnow() - timedelta(seconds=60)))
            session.commit()
        fast = PartLeases(sessions, lease_seconds=0.3)
        with fast.lock_part("u1", 0, timeout=1) as taker:
            assert rows(sessions) == [("u1", 0, taker.holder)]
            # The old holder's next renewal finds the row no longer its own.
            fast._renew(dead, threading.Event())
            assert dead.lost.is_set()
            # Nor does the old holder's release delete the new holder's row.
            leases._release(dead)
            assert rows(sessions) == [("u1", 0, taker.holder)]
    assert rows(sessions) == []


def test_the_sweeper_removes_leases_left_by_dead_processes(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        session.add(
            PartLease(
                storage_id="old",
                index=0,
                holder="x" * 32,
                renewed_at=utcnow() - timedelta(seconds=600),
            )
        )
        session.add(PartLease(storage_id="new", index=0, holder="y" * 32, renewed_at=utcnow()))
        session.commit()
    assert PartLeases(sessions, lease_seconds=30).remove_stale(120) == 1
    assert [r[0] for r in rows(sessions)] == ["new"]
