"""Several sweepers at once (one per `chute worker`, on any host) never double a
transition: each stale job is re-queued, failed or expired once, and enqueued once."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from chute.auth.service import add_user, issue_token
from chute.config import Settings
from chute.db.migrate import upgrade
from chute.db.models import AuthToken, Chunk, Job, JobStatus, TokenKind, Upload, User, utcnow
from chute.jobs.runner import run_job
from chute.jobs.sweeper import sweep
from chute.runtime import Runtime, build_runtime
from tests.conftest import postgres_database, require_services

SWEEPERS = 4


class Recorder:
    """Stands in for the queue and the storage: counts what the sweepers ask of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enqueued: Counter[int] = Counter()
        self.aborted: Counter[str] = Counter()

    def enqueue(self, job_id: int) -> None:
        with self.lock:
            self.enqueued[job_id] += 1

    def abort(self, storage_id: str) -> None:
        with self.lock:
            self.aborted[storage_id] += 1


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'chute.db'}"
        return
    require_services(redis=False)
    with postgres_database() as url:
        yield url


@pytest.fixture
def runtimes(database_url: str, tmp_path: Path) -> Iterator[list[Runtime]]:
    """Runtimes as separate processes would have them: an engine each, one database."""
    upgrade(database_url)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, max_attempts=3)
    built = [build_runtime(settings, handler=run_job) for _ in range(SWEEPERS)]
    yield built
    for rt in built:
        rt.close()


def add_jobs(rt: Runtime) -> dict[str, list[int]]:
    """Jobs each sweep must act on once, by what it must do with them."""
    long_ago = utcnow() - timedelta(days=2)
    ids: dict[str, list[int]] = {"lost": [], "worn_out": [], "queued": [], "stale_upload": []}
    with rt.sessions() as session:
        user = User(username="sweeper-test", password_hash="x")
        session.add(user)
        session.flush()

        def job(status: JobStatus, **values: Any) -> Job:
            made = Job(
                user_id=user.id, name="j", kind="profile", params={}, status=status, **values
            )
            session.add(made)
            session.flush()
            return made

        for n in range(10):
            ids["lost"].append(
                job(JobStatus.RUNNING, claim=f"c{n}", heartbeat_at=long_ago, attempts=1).id
            )
            ids["worn_out"].append(
                job(JobStatus.RUNNING, claim=f"w{n}", heartbeat_at=long_ago, attempts=3).id
            )
            ids["queued"].append(job(JobStatus.QUEUED, queued_at=long_ago).id)
            uploading = job(JobStatus.UPLOADING)
            session.add(
                Upload(
                    job_id=uploading.id,
                    storage_id=f"upload-{n}",
                    total_chunks=2,
                    chunks_received=1,
                    bytes_received=10,
                    touched_at=long_ago,
                )
            )
            session.flush()
            session.add(Chunk(job_id=uploading.id, index=0, size=10, sha256="0" * 64))
            ids["stale_upload"].append(uploading.id)
        session.commit()
    return ids


def test_sweepers_at_once_act_on_each_job_once(runtimes: list[Runtime]) -> None:
    ids = add_jobs(runtimes[0])
    recorder = Recorder()
    for rt in runtimes:
        rt.queue = recorder  # type: ignore[assignment]
        rt.storage = recorder  # type: ignore[assignment]
    start = threading.Barrier(len(runtimes))
    errors: list[BaseException] = []

    def run(rt: Runtime) -> None:
        start.wait()
        try:
            for _ in range(3):
                sweep(rt)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(rt,)) for rt in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []

    # Each lost run and each unclaimed queued job enqueued exactly once; worn-out runs never.
    assert recorder.enqueued == Counter(ids["lost"] + ids["queued"])
    assert recorder.aborted == Counter(f"upload-{n}" for n in range(10))
    with runtimes[0].sessions() as session:
        status = dict(session.execute(select(Job.id, Job.status)).all())
        attempts = dict(session.execute(select(Job.id, Job.attempts)).all())
        uploads = session.scalars(select(Upload.job_id)).all()
        chunks = session.scalars(select(Chunk.job_id)).all()
    assert {status[i] for i in ids["lost"] + ids["queued"]} == {JobStatus.QUEUED}
    assert {status[i] for i in ids["worn_out"]} == {JobStatus.FAILED}
    assert {status[i] for i in ids["stale_upload"]} == {JobStatus.UPLOAD_EXPIRED}
    assert {attempts[i] for i in ids["lost"]} == {1}  # the sweeper never counts a start
    assert (uploads, chunks) == ([], [])


def test_a_sweep_removes_scratch_folders_of_runs_that_are_over(runtimes: list[Runtime]) -> None:
    rt = runtimes[0]
    rt.queue = Recorder()  # type: ignore[assignment]
    with rt.sessions() as session:
        user = User(username="scratch-test", password_hash="x")
        session.add(user)
        session.flush()
        jobs = {}
        for what, status, claim in [
            ("running", JobStatus.RUNNING, "aa11"),
            ("succeeded", JobStatus.SUCCEEDED, None),
            ("queued", JobStatus.QUEUED, None),  # taken back from a dead worker
        ]:
            job = Job(
                user_id=user.id,
                name=what,
                kind="profile",
                params={},
                status=status,
                claim=claim,
                heartbeat_at=utcnow() if claim else None,
            )
            session.add(job)
            session.flush()
            jobs[what] = job.id
        session.commit()
    scratch = rt.settings.data_dir.resolve() / "scratch"
    live = scratch / f"{jobs['running']}-aa11"
    stale = [
        scratch / f"{jobs['running']}-bb22",  # an earlier run of the running job
        scratch / f"{jobs['succeeded']}-cc33",
        scratch / f"{jobs['queued']}-dd44",
        scratch / "987654-ee55",  # a job since deleted
    ]
    other = scratch / "not-a-run"
    for folder in [live, *stale, other]:
        (folder / "duckdb").mkdir(parents=True)
        (folder / "input.csv").write_bytes(b"a,b\n" * 1000)

    sweep(rt)
    assert sorted(p.name for p in scratch.iterdir()) == sorted([live.name, other.name])
    assert (live / "input.csv").exists()


def test_a_sweep_deletes_expired_tokens_and_sessions(tmp_path: Path) -> None:
    """The sweep calls the auth purge: expired rows go, live ones stay (real SQLite)."""
    url = f"sqlite:///{tmp_path / 'chute.db'}"
    upgrade(url)
    rt = build_runtime(Settings(data_dir=tmp_path / "data", database_url=url), handler=run_job)
    try:
        with rt.sessions() as session:
            user = add_user(session, "sweep-auth", "pw")
            live = issue_token(session, user, TokenKind.BEARER, 3600)
            expired = [issue_token(session, user, kind, 60) for kind in TokenKind]
            session.execute(
                update(AuthToken)
                .where(AuthToken.token_hash.in_([digest(s) for s in expired]))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
        sweep(rt)
        with rt.sessions() as session:
            hashes = set(session.scalars(select(AuthToken.token_hash)))
        assert hashes == {digest(live)}
    finally:
        rt.close()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
