"""The quota's arithmetic in this process (`chute.upload.quota`), on SQLite: what the
ledger counts for requests in flight. The real servers' tests are tests/api/test_quotas.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from chute.auth.service import add_user
from chute.cli import parse_quota
from chute.config import Settings
from chute.db.migrate import upgrade
from chute.db.models import Job, JobStatus
from chute.db.session import make_engine, make_sessionmaker
from chute.errors import ChuteError, Problem
from chute.storage import make_storage
from chute.upload import chunks, quota
from chute.upload.protocol import ChunkRequest
from chute.upload.quota import Flight, QuotaLedger

QUOTA = 1000


World = tuple[Settings, sessionmaker[Session], int]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = Settings.model_validate({"data_dir": tmp_path, "user_quota_bytes": QUOTA})
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        user_id = add_user(session, "ada", "pw-for-tests").id
    yield settings, sessions, user_id
    engine.dispose()


def refused(call: Callable[[], object]) -> ChuteError:
    with pytest.raises(ChuteError) as caught:
        call()
    assert caught.value.problem is Problem.QUOTA_EXCEEDED
    return caught.value


def test_flights_of_one_upload_share_its_floor(world: World) -> None:
    settings, sessions, user = world
    ledger = QuotaLedger()

    def reserve(flight: Flight) -> quota.Reservation:
        return ledger.reserve(sessions, settings, user, flight)

    # Two chunks of one 900-byte file: its floor once, not twice.
    a = reserve(Flight("job:1", 300, 900))
    b = reserve(Flight("job:1", 300, 900))
    c = reserve(Flight("job:1", 300, 900))
    # The file's 900 bytes are promised; another upload has 100 left, not 101.
    d = reserve(Flight("job:2", 100))
    error = refused(lambda: reserve(Flight("job:3", 1)))
    assert "it needs 1 bytes more, and you use 1000 bytes of your 1000 bytes" in str(error)
    # A fourth 300-byte chunk of the first file would make it 1200 bytes: refused.
    refused(lambda: reserve(Flight("job:1", 300, 900)))
    assert ledger.in_flight(user) == 1000
    d.release()
    d.release()  # twice is harmless
    reserve(Flight("job:3", 100)).release()
    for r in (a, b, c):
        r.release()
    assert ledger.in_flight(user) == 0
    reserve(Flight("job:4", QUOTA)).release()


def test_what_adds_nothing_passes_past_the_quota(world: World) -> None:
    settings, sessions, user = world
    ledger = QuotaLedger()
    held = ledger.reserve(sessions, settings, user, Flight("job:1", 10, QUOTA))
    # A re-send (size 0) of the same upload, and a chunk within its promised file.
    ledger.reserve(sessions, settings, user, Flight("job:1", 0, QUOTA)).release()
    ledger.reserve(sessions, settings, user, Flight("job:1", 500, QUOTA)).release()
    refused(lambda: ledger.reserve(sessions, settings, user, Flight("job:2", 1)))
    held.release()


def test_overrides(world: World) -> None:
    settings, sessions, user = world
    assert quota.effective(settings, None) == QUOTA
    assert quota.effective(settings, 0) is None
    assert quota.effective(settings, 5) == 5
    with sessions() as session:
        quota.set_override(session, user, 0)
        assert quota.usage_of(session, settings, user).quota is None
        with pytest.raises(ChuteError) as caught:
            quota.set_override(session, user, -1)
        assert caught.value.problem is Problem.INVALID_FIELD
        for nobody in (user + 1, 0, -1, 2**31, 2**63):
            with pytest.raises(ChuteError) as caught:
                quota.set_override(session, nobody, 5)
            assert caught.value.problem is Problem.USER_NOT_FOUND
    ledger = QuotaLedger()
    ledger.reserve(sessions, settings, user, Flight("job:1", 10**15)).release()


def test_the_floor_of_a_chunk_upload() -> None:
    assert quota.chunk_floor(1234, 100, 13) == 1234
    assert quota.chunk_floor(None, 100, 13) == 1200  # all chunks but the last are whole
    assert quota.chunk_floor(None, None, 13) == 0
    assert quota.chunk_floor(None, 100, 1) == 0


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("500MiB", 500 * 2**20),
        ("20GB", 20 * 10**9),
        ("2 TiB", 2 * 2**40),
        ("default", None),
        ("DEFAULT", None),
    ],
)
def test_sizes_the_command_takes(raw: str, size: int | None) -> None:
    assert parse_quota(raw) == size


@pytest.mark.parametrize("raw", ["-5", "", "MiB", "5 parsecs", "1.5GB", "٣", "1e9", "5KiBB"])
def test_sizes_the_command_refuses(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_quota(raw)


def test_a_record_checks_the_database_again(world: World, tmp_path: Path) -> None:
    """What another API process's ledger let through, the record refuses: two chunks
    each checked against an empty database, only the first recorded."""
    settings, sessions, user = world
    storage = make_storage(settings.model_copy(update={"storage_url": f"file://{tmp_path}/s"}))
    with sessions() as session:
        jobs = []
        for name in ("a", "b"):
            job = Job(user_id=user, name=name, kind="profile", status=JobStatus.AWAITING_UPLOAD)
            session.add(job)
            session.commit()
            jobs.append(job.id)
    requests = [ChunkRequest(job_id, 0, 1, None, None, None, "data.csv") for job_id in jobs]
    with sessions() as session:
        plans = [chunks.open_upload(session, storage, settings, user, r) for r in requests]
    stored = [chunks.StoredChunk(p.storage_id, 600, "0" * 64, True) for p in plans]
    with sessions() as session:
        assert chunks.record_chunk(session, settings, user, requests[0], stored[0]).completed_now
    with sessions() as session:
        error = refused(
            lambda: chunks.record_chunk(session, settings, user, requests[1], stored[1])
        )
    assert "you use 600 bytes of your 1000 bytes" in str(error)
    with sessions() as session:
        assert quota.usage_of(session, settings, user).stored == 600
        second = session.get(Job, jobs[1])
        assert second is not None and second.status is JobStatus.AWAITING_UPLOAD
