"""Periodic repairs: expire abandoned uploads, re-enqueue jobs whose enqueue was lost,
and take back running jobs whose worker stopped heartbeating.

Every change is a conditional update, so any number of sweepers may run at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from chute.db.models import Job, JobStatus, utcnow
from chute.upload.service import expire_uploads

if TYPE_CHECKING:
    from chute.runtime import Runtime

log = logging.getLogger(__name__)


def sweep(rt: Runtime, now: datetime | None = None) -> None:
    now = now or utcnow()
    with rt.sessions() as session:
        expired = expire_uploads(session, now, rt.settings.upload_expiry)
    for storage_id in expired:
        rt.storage.abort(storage_id)
    if expired:
        log.info("removed %d expired uploads", len(expired))
    # Leases are deleted by their holders; these were left by processes that died.
    stale = rt.part_leases.remove_stale(4 * rt.settings.part_lease_seconds)
    if stale:
        log.info("removed %d part leases whose holders stopped", stale)
    for job_id in _stale_queued(rt, now):
        log.info("job %s was queued but not claimed; enqueueing it again", job_id)
        rt.queue.enqueue(job_id)
    for job_id in _lost_running(rt, now):
        log.info("job %s lost its worker; enqueueing it again", job_id)
        rt.queue.enqueue(job_id)


def _stale_queued(rt: Runtime, now: datetime) -> list[int]:
    cutoff = now - timedelta(seconds=rt.settings.requeue_after)
    with rt.sessions() as session:
        ids = list(
            session.scalars(
                select(Job.id).where(Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)
            )
        )
        # Take each re-enqueue once, however many sweepers saw the job.
        taken = []
        for job_id in ids:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)
                .values(queued_at=now)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                taken.append(job_id)
        session.commit()
    return taken


def _lost_running(rt: Runtime, now: datetime) -> list[int]:
    """Running jobs with no heartbeat for `heartbeat_timeout`: back to `queued`, or to
    `failed` once they have been started `max_attempts` times. Returns those re-queued."""
    cutoff = now - timedelta(seconds=rt.settings.heartbeat_timeout)
    limit = rt.settings.max_attempts
    with rt.sessions() as session:
        stale = session.execute(
            select(Job.id, Job.claim, Job.attempts).where(
                Job.status == JobStatus.RUNNING,
                or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
            )
        ).all()
        requeued = []
        for job_id, claim, attempts in stale:
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
                update(Job)
                .where(*same_run)
                .values(claim=None, heartbeat_at=None, updated_at=now, **values)
            )
            if result.rowcount and attempts < limit:  # type: ignore[attr-defined]
                requeued.append(job_id)
        session.commit()
    return requeued


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
