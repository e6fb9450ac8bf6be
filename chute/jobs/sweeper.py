"""Periodic repairs: expire abandoned uploads, re-enqueue jobs whose enqueue was lost.

Every change is a conditional update, so any number of sweepers may run at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

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
    for job_id in _stale_queued(rt, now):
        log.info("job %s was queued but not claimed; enqueueing it again", job_id)
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
