"""A job's row, as both the upload core and the job runner see it: lookup by owner,
status transitions, where its files are stored, and when its upload expires.

Every status change is a conditional UPDATE (`... WHERE status IN (...)`), so each
transition happens at most once whatever runs at the same time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from chute.db.models import Job, JobStatus, Upload, utcnow
from chute.errors import ChuteError, Problem
from chute.storage import Storage
from chute.webhooks.events import job_changed

# The largest id any supported database holds (a signed 64-bit integer).
MAX_ID = 2**63 - 1


def get_owned_job(session: Session, user_id: int, job_id: int, *, lock: bool = False) -> Job:
    """The job, if it is this user's; another user's job answers the same 404 as none."""
    if not 0 < job_id <= MAX_ID:
        # Names no job; a larger number would not even bind as a query parameter.
        raise ChuteError(Problem.JOB_NOT_FOUND)
    query = select(Job).where(Job.id == job_id, Job.user_id == user_id)
    job = session.scalar(query.with_for_update() if lock else query)
    if job is None:
        raise ChuteError(Problem.JOB_NOT_FOUND)
    return job


def transition(
    session: Session,
    job_id: int,
    from_: Iterable[JobStatus],
    to: JobStatus,
    **values: Any,
) -> bool:
    """Move a job to `to` if it is in one of `from_`; True if this call moved it.

    The move's webhook event, if it has one, is written in the same transaction.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(from_)))
        .values(status=to, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    moved = bool(result.rowcount)  # type: ignore[attr-defined]
    if moved:
        job_changed(session, job_id, to)
    return moved


def job_prefix(job_id: int) -> str:
    """The storage folder of everything a job has: its assembled input and its outputs."""
    return f"jobs/{job_id}/"


def input_key(job_id: int) -> str:
    """Storage key of a job's assembled input file."""
    return f"{job_prefix(job_id)}input.csv"


def expires_at(upload: Upload, expiry_seconds: int) -> datetime | None:
    if upload.completed_at is not None:
        return None
    return upload.touched_at + timedelta(seconds=expiry_seconds)


@dataclass(frozen=True)
class Leftovers:
    """What storage holds for an upload that nothing will read: unfinished uploads to
    abort, stored files to delete (a tus final upload's partials, once joined or not)."""

    uploads: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def remove_stored(storage: Storage, found: Leftovers, job_ids: Iterable[int] = ()) -> None:
    """Remove from storage what deleting or cancelling jobs left (`found`), then each job's
    folder. Reads nothing from the database, so it may run again after a failure."""
    for upload_id in found.uploads:
        storage.abort(upload_id)
    for key in found.files:
        storage.delete(key)
    for job_id in job_ids:
        storage.delete_prefix(job_prefix(job_id))


def leftovers(upload: Upload | None) -> Leftovers:
    if upload is None:
        return Leftovers()
    sources = upload.sources or []
    return Leftovers(
        [upload.storage_id, *(s["storage_id"] for s in sources)], [s["key"] for s in sources]
    )
