"""Periodic repairs: expire abandoned uploads, re-enqueue jobs whose enqueue was lost,
take back running jobs whose worker stopped heartbeating, re-enqueue webhook deliveries
whose task was lost (and forget month-old webhook events), remove the scratch folders
that runs which ended without cleaning up (a worker killed mid-job) left behind, and
delete expired tokens, sessions and sign-in failures.

Any number of sweepers may run at once (one per `chute worker`, on any host). A sweep
first lists candidates without locking anything, then changes each in a transaction of
its own with a conditional UPDATE that re-checks why it was picked (still queued and
not re-queued since; still the same silent run). Of two sweepers that picked the same
job, the database lets exactly one update match; the other sees rowcount 0 and leaves
the job alone, so no transition or re-enqueue is ever doubled. One row per transaction
also means two sweepers never hold locks on several rows, which could deadlock.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from chute.auth.service import purge_expired
from chute.auth.throttle import SigninLimits
from chute.db.models import Job, JobStatus, utcnow
from chute.db.session import in_transaction
from chute.jobs.runner import scratch_root
from chute.upload.core import expire_upload, stale_uploads
from chute.upload.tus_records import expire_partial, stale_partials
from chute.webhooks.delivery import lost_deliveries
from chute.webhooks.events import job_changed, purge_events

if TYPE_CHECKING:
    from chute.runtime import Runtime

log = logging.getLogger(__name__)

# How long webhook events and their deliveries stay listed once nothing retries them.
KEEP_WEBHOOK_EVENTS = timedelta(days=30)


def sweep(rt: Runtime, now: datetime | None = None) -> None:
    now = now or utcnow()
    expired = _expire_uploads(rt, now)
    if expired:
        log.info("removed %d expired uploads", expired)
    # Leases are deleted by their holders; these were left by processes that died.
    stale = rt.part_leases.remove_stale(4 * rt.settings.part_lease_seconds)
    if stale:
        log.info("removed %d part leases whose holders stopped", stale)
    purged = _purge_auth(rt, now)
    if purged:
        log.info("removed %d expired tokens, sessions and old sign-in failures", purged)
    for job_id in _stale_queued(rt, now):
        log.info("job %s was queued but not claimed; enqueueing it again", job_id)
        rt.queue.enqueue(job_id)
    for job_id in _lost_running(rt, now):
        log.info("job %s lost its worker; enqueueing it again", job_id)
        rt.queue.enqueue(job_id)
    with rt.sessions() as session:
        purged = purge_events(session, now - KEEP_WEBHOOK_EVENTS)
    if purged:
        log.info("removed %d webhook events older than %s", purged, KEEP_WEBHOOK_EVENTS)
    for delivery_id in lost_deliveries(
        rt.sessions, rt.webhook_policy, rt.settings.requeue_after, now
    ):
        log.info("webhook delivery %s was due but not sent; enqueueing it again", delivery_id)
        rt.webhooks.enqueue(delivery_id)
    remove_stale_scratch(rt)


def _expire_uploads(rt: Runtime, now: datetime) -> int:
    max_age = rt.settings.upload_expiry
    with rt.sessions() as session:
        candidates = stale_uploads(session, now, max_age)
        partials = stale_partials(session, now, max_age)
    removed = 0
    for job_id in candidates:
        storage_id = in_transaction(rt.sessions, expire_upload, job_id, now, max_age)
        if storage_id is not None:
            rt.storage.abort(storage_id)
            removed += 1
    # tus partial uploads that no final upload took in time.
    for tus_id in partials:
        storage_id = in_transaction(rt.sessions, expire_partial, tus_id, now, max_age)
        if storage_id is not None:
            rt.storage.abort(storage_id)
            removed += 1
    return removed


def _purge_auth(rt: Runtime, now: datetime) -> int:
    # Plain DELETEs of rows that no longer count: two sweepers at once just split them.
    with rt.sessions() as session:
        return purge_expired(session, SigninLimits.of(rt.settings), now)


def _stale_queued(rt: Runtime, now: datetime) -> list[int]:
    cutoff = now - timedelta(seconds=rt.settings.requeue_after)
    with rt.sessions() as session:
        ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)
                .order_by(Job.id)
            )
        )
    # Take each re-enqueue once, however many sweepers saw the job.
    return [
        job_id for job_id in ids if in_transaction(rt.sessions, _take_requeue, job_id, cutoff, now)
    ]


def _take_requeue(session: Session, job_id: int, cutoff: datetime, now: datetime) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)
        .values(queued_at=now)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _lost_running(rt: Runtime, now: datetime) -> list[int]:
    """Running jobs with no heartbeat for `heartbeat_timeout`: back to `queued`, or to
    `failed` once they have been started `max_attempts` times. Returns those re-queued."""
    cutoff = now - timedelta(seconds=rt.settings.heartbeat_timeout)
    with rt.sessions() as session:
        stale = session.execute(
            select(Job.id, Job.claim, Job.attempts)
            .where(
                Job.status == JobStatus.RUNNING,
                or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
            )
            .order_by(Job.id)
        ).all()
    limit = rt.settings.max_attempts
    return [
        job_id
        for job_id, claim, attempts in stale
        if in_transaction(rt.sessions, _take_back, job_id, claim, attempts, limit, cutoff, now)
        and attempts < limit
    ]


def _take_back(
    session: Session,
    job_id: int,
    claim: str | None,
    attempts: int,
    limit: int,
    cutoff: datetime,
    now: datetime,
) -> bool:
    """End the silent run `claim` of the job: re-queue or fail it. True if this call did."""
    # Only if it is still the same run, still silent: it may have beaten meanwhile.
    same_run = [
        Job.id == job_id,
        Job.status == JobStatus.RUNNING,
        Job.claim == claim if claim is not None else Job.claim.is_(None),
        or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
    ]
    if attempts >= limit:
        values: dict[str, Any] = {
            "status": JobStatus.FAILED,
            "finished_at": now,
            "error": "The job's worker stopped before it finished "
            f"(tried {attempts} of {limit} times); it is not tried again.",
        }
    else:
        values = {"status": JobStatus.QUEUED, "queued_at": now, "progress": None}
    result = session.execute(
        update(Job).where(*same_run).values(claim=None, heartbeat_at=None, updated_at=now, **values)
    )
    taken = bool(result.rowcount)  # type: ignore[attr-defined]
    if taken and attempts >= limit:
        job_changed(session, job_id, JobStatus.FAILED)
    session.commit()
    return taken


_SCRATCH_NAME = re.compile(r"(\d+)-([0-9a-f]+)")


def remove_stale_scratch(rt: Runtime) -> int:
    """Remove every scratch folder whose run is over; returns how many were removed.

    A run's folder is `{job id}-{claim}` and is made after its claim is committed. The
    run is live exactly while the database has its job `running` under that claim: the
    claim ends when the run finishes (it then removes the folder itself), or when the
    job is cancelled, deleted, or taken back by the sweeper after `heartbeat_timeout`
    without a heartbeat (its worker died, and its copy of the input is left). So a
    folder whose claim is no longer its job's running claim is stale, whichever process
    made it: workers sharing a data dir (several on one host) keep each other's live
    folders. Folders are listed before the database is read, so a run that starts in
    between is not listed. A run that lost its claim while still alive stops at its next
    heartbeat; it may find its folder gone first, which changes nothing it could store.
    """
    root = scratch_root(rt.settings)
    runs: dict[str, tuple[int, str]] = {}
    if root.is_dir():
        for path in root.iterdir():
            named = _SCRATCH_NAME.fullmatch(path.name)
            if named and path.is_dir():  # anything else there is not ours to remove
                runs[path.name] = (int(named[1]), named[2])
    if not runs:
        return 0
    ids = sorted({job_id for job_id, _ in runs.values()})
    live: set[tuple[int, str | None]] = set()
    with rt.sessions() as session:
        for start in range(0, len(ids), 500):
            live.update(
                (job_id, claim)
                for job_id, claim in session.execute(
                    select(Job.id, Job.claim).where(
                        Job.id.in_(ids[start : start + 500]), Job.status == JobStatus.RUNNING
                    )
                )
            )
    stale = [name for name, run in runs.items() if run not in live]
    for name in stale:
        shutil.rmtree(root / name, ignore_errors=True)
    if stale:
        log.info("removed %d scratch folders of runs that ended: %s", len(stale), ", ".join(stale))
    return len(stale)


class Sweeper(threading.Thread):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="chute-sweeper", daemon=True)
        self.rt = rt
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.rt.settings.sweep_interval):
            try:
                sweep(self.rt)
            except Exception:
                log.exception("sweep failed; trying again next time")

    def stop(self) -> None:
        self.stopping.set()
