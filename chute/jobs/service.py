"""Jobs: creation, lookup by owner, listing, cancel and delete.

Every status change is a conditional UPDATE (`... WHERE status IN (...)`), so each
transition happens at most once whatever runs at the same time.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from chute.db.models import ENDED, Job, JobStatus, Upload, utcnow
from chute.errors import ChuteError, Problem

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
    """Move a job to `to` if it is in one of `from_`; True if this call moved it."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(from_)))
        .values(status=to, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def create_job(session: Session, user_id: int, name: str, kind: str, params: dict[str, Any]) -> Job:
    job = Job(
        user_id=user_id, name=name, kind=kind, params=params, status=JobStatus.AWAITING_UPLOAD
    )
    session.add(job)
    session.commit()
    return job


def list_jobs(
    session: Session, user_id: int, limit: int, offset: int
) -> tuple[list[tuple[Job, Upload | None]], int]:
    total = session.scalar(select(func.count()).select_from(Job).where(Job.user_id == user_id))
    rows = session.execute(
        select(Job, Upload)
        .outerjoin(Upload, Upload.job_id == Job.id)
        .where(Job.user_id == user_id)
        .order_by(Job.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [(job, upload) for job, upload in rows], int(total or 0)


def upload_of(session: Session, job_id: int) -> Upload | None:
    return session.get(Upload, job_id)


def cancel_job(session: Session, user_id: int, job_id: int) -> tuple[Job, str | None]:
    """Cancel a job that has not ended; return it and the storage id of its upload.

    The caller removes that upload's parts: nothing reads them once the job is cancelled,
    not even when the upload was complete but not yet assembled by a worker (a queued job).
    """
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.get(Upload, job_id)
    live = set(JobStatus) - ENDED
    if not transition(session, job_id, live, JobStatus.CANCELLED, finished_at=utcnow()):
        raise ChuteError(Problem.JOB_NOT_CANCELLABLE, status=job.status.value)
    discard = None
    if upload is not None:
        discard = upload.storage_id
        if upload.completed_at is None:
            session.delete(upload)
    session.commit()
    session.refresh(job)
    return job, discard


def delete_job(session: Session, user_id: int, job_id: int) -> str | None:
    """Delete a job; return the storage id of its upload, whose leftovers the caller removes.

    The upload's id is returned even when it is complete: its parts stay on storage until a
    worker has assembled them.
    """
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.get(Upload, job_id)
    storage_id = upload.storage_id if upload is not None else None
    session.delete(job)
    session.commit()
    return storage_id


def input_key(job_id: int) -> str:
    """Storage key of a job's assembled input file."""
    return f"jobs/{job_id}/input.csv"


def expires_at(upload: Upload, expiry_seconds: int) -> datetime | None:
    if upload.completed_at is not None:
        return None
    return upload.touched_at + timedelta(seconds=expiry_seconds)
