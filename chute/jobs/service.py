"""Jobs: creation, lookup by owner, listing, cancel and delete.

Every status change is a conditional UPDATE (`... WHERE status IN (...)`), so each
transition happens at most once whatever runs at the same time.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chute.db.jobs import Leftovers, get_owned_job, leftovers, transition
from chute.db.models import ENDED, Job, JobStatus, Upload, utcnow
from chute.errors import ChuteError, Problem, invalid, plain_words
from chute.jobs.kinds import Kind


def create_job(
    session: Session, kinds: dict[str, Kind], user_id: int, name: str, kind: str, params: Any
) -> Job:
    """A new job, waiting for its upload; its kind and params are checked first (422)."""
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise invalid(f"kind: unknown job kind {kind!r}; this server runs: {known}.")
    if not isinstance(params, dict):
        raise invalid("params: must be a JSON object.")
    try:
        params = kinds[kind].check_params(params)
    except ValidationError as exc:
        raise invalid(plain_words(exc.errors(), prefix="params")) from None
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


def cancel_job(session: Session, user_id: int, job_id: int) -> tuple[Job, Leftovers]:
    """Cancel a job that has not ended; return it and what storage holds of its upload.

    The caller removes that: nothing reads them once the job is cancelled,
    not even when the upload was complete but not yet assembled by a worker (a queued job).
    """
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.get(Upload, job_id)
    live = set(JobStatus) - ENDED
    # A running job's worker sees its claim gone at its next heartbeat, and stops.
    ended = transition(
        session,
        job_id,
        live,
        JobStatus.CANCELLED,
        finished_at=utcnow(),
        claim=None,
        heartbeat_at=None,
    )
    if not ended:
        raise ChuteError(Problem.JOB_NOT_CANCELLABLE, status=job.status.value)
    discard = leftovers(upload)
    if upload is not None and upload.completed_at is None:
        session.delete(upload)
    session.commit()
    session.refresh(job)
    return job, discard


def delete_job(session: Session, user_id: int, job_id: int) -> Leftovers:
    """Delete a job; return what storage holds of its upload, for the caller to remove.

    That is returned even when the upload is complete: its parts stay on storage until a
    worker has assembled them.
    """
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.get(Upload, job_id)
    discard = leftovers(upload)
    session.delete(job)
    session.commit()
    return discard


def result_of(session: Session, user_id: int, job_id: int) -> dict[str, Any]:
    job = get_owned_job(session, user_id, job_id)
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise ChuteError(Problem.NO_RESULT, status=job.status.value)
    return job.result


def output_of(session: Session, user_id: int, job_id: int, name: str) -> tuple[str, int]:
    """Storage key and size of a file a succeeded job made."""
    job = get_owned_job(session, user_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise ChuteError(Problem.NO_RESULT, status=job.status.value)
    output = (job.outputs or {}).get(name)
    if output is None:
        raise ChuteError(Problem.OUTPUT_NOT_FOUND, name=name)
    return str(output["key"]), int(output["size"])
