"""The upload core's records: durable parts of an upload, completion, expiry, discard.

Both front doors (the chunk endpoint and tus) record parts here, and only here does an
upload complete and its job get queued. A part is a row only once all its bytes are
durably stored and verified. Each function is one short transaction; the job and then
the upload row are locked (`FOR UPDATE`; on SQLite every transaction takes the write
lock up front) before they are read, so two parts recorded at once see each other and
exactly one of them completes the upload. No transaction is held open while bytes stream.

An upload is complete when it holds all its chunks (chunk protocol: `total_chunks`) or
all its bytes (tus: `file_size`, which a tus upload knows from its creation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from chute.db.jobs import expires_at, get_owned_job, transition
from chute.db.models import Chunk, Job, JobStatus, Upload, utcnow
from chute.errors import ChuteError, Problem
from chute.metrics import parts_recorded, upload_expired
from chute.storage import PlacedPart

TAKES_DATA = (JobStatus.AWAITING_UPLOAD, JobStatus.UPLOADING)


@dataclass(frozen=True)
class NewPart:
    """A part whose bytes are durably stored, to be recorded."""

    index: int
    size: int
    sha256: str
    # Where it starts in the file; None while the chunk size is not known (chunks only).
    offset: int | None
    # Written at its place in the file (False: kept aside until the upload completes).
    placed: bool = True


def locked(session: Session, user_id: int, job_id: int) -> tuple[Job, Upload | None]:
    """The user's job and its upload, both locked for this transaction (404 for another's)."""
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.scalar(select(Upload).where(Upload.job_id == job.id).with_for_update())
    return job, upload


def check_takes_data(job: Job) -> None:
    if job.status not in TAKES_DATA:
        raise ChuteError(Problem.NOT_ACCEPTING_DATA, status=job.status.value)


def is_complete(upload: Upload) -> bool:
    """Whether the parts recorded make the whole file."""
    if upload.total_chunks is not None:
        return upload.chunks_received == upload.total_chunks
    return upload.file_size is not None and upload.bytes_received == upload.file_size


def record_parts(session: Session, job: Job, upload: Upload, parts: Sequence[NewPart]) -> bool:
    """Add parts, in the caller's transaction (job and upload locked, the front door's
    own checks passed), and commit. Returns True if this commit completed the upload:
    then, and only then, the job moved to `queued`, and the caller enqueues it."""
    now = utcnow()
    transition(session, job.id, [JobStatus.AWAITING_UPLOAD], JobStatus.UPLOADING)
    for part in parts:
        session.add(
            Chunk(
                job_id=job.id,
                index=part.index,
                size=part.size,
                sha256=part.sha256,
                placed=part.placed,
                offset=part.offset,
            )
        )
        upload.chunks_received += 1
        upload.bytes_received += part.size
    upload.touched_at = now
    completed_now = False
    if is_complete(upload):
        completed_now = transition(
            session, job.id, [JobStatus.UPLOADING], JobStatus.QUEUED, queued_at=now
        )
        if completed_now:
            upload.completed_at = now
    session.commit()
    # Here, once for both protocols: a tus final upload's parts are counted when they
    # join it (its partial uploads record theirs outside the core).
    parts_recorded([part.size for part in parts], completed_now)
    return completed_now


def held_open(session: Session, job_id: int, storage_id: str) -> bool:
    """Whether the database still holds the upload `storage_id` open.

    Asked when the storage says such an upload does not exist. If the database no longer
    holds it either, it was discarded (or replaced) while the part was sent: the client is
    told so. If it still does, the storage lost it, or this API process stores elsewhere
    than the one that began it (a CHUTE_STORAGE_URL that differs): a fault of the server.
    """
    upload = session.get(Upload, job_id)
    return upload is not None and upload.storage_id == storage_id and upload.completed_at is None


def started(upload: Upload | None) -> bool:
    """An upload shows once a part is recorded, or once tus created it (its client holds a
    URL); before, it is only the server's bookkeeping."""
    return upload is not None and (upload.chunks_received > 0 or upload.protocol == "tus")


def upload_status(
    session: Session, user_id: int, job_id: int, expiry_seconds: int
) -> dict[str, Any]:
    """What the server holds of a job's upload, whichever front door carried it."""
    job = get_owned_job(session, user_id, job_id)
    upload = session.get(Upload, job.id)
    answer: dict[str, Any] = {
        "job_id": job.id,
        "state": "empty",
        "protocol": None,
        "total_chunks": None,
        "chunk_size": None,
        "file_size": None,
        "bytes_received": 0,
        "chunks": [],
    }
    if not started(upload):
        return answer
    assert upload is not None
    chunks = session.scalars(
        select(Chunk).where(Chunk.job_id == job.id).order_by(Chunk.index)
    ).all()
    answer.update(
        state="complete" if upload.completed_at is not None else "partial",
        protocol=upload.protocol,
        total_chunks=upload.total_chunks,
        chunk_size=upload.chunk_size,
        file_size=upload.file_size,
        bytes_received=upload.bytes_received,
        chunks=[{"index": c.index, "size": c.size, "sha256": c.sha256} for c in chunks],
    )
    if upload.completed_at is None:
        answer["expires_at"] = expires_at(upload, expiry_seconds)
    return answer


def discard(session: Session, job: Job, upload: Upload | None) -> str | None:
    """Forget an unfinished upload (job and upload locked); return its storage id for the
    caller to remove. The job goes back to `awaiting_upload`."""
    if upload is None:
        session.commit()
        return None
    if upload.completed_at is not None:
        raise ChuteError(Problem.UPLOAD_COMPLETE)
    storage_id = upload.storage_id
    session.delete(upload)
    transition(session, job.id, [JobStatus.UPLOADING], JobStatus.AWAITING_UPLOAD)
    session.commit()
    return storage_id


def discard_upload(session: Session, user_id: int, job_id: int) -> str | None:
    job, upload = locked(session, user_id, job_id)
    return discard(session, job, upload)


def parts_for_assembly(session: Session, job_id: int) -> list[PlacedPart]:
    """The recorded parts of a complete upload, in file order, with their offsets."""
    upload = session.get(Upload, job_id)
    assert upload is not None and upload.completed_at is not None
    rows = session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.index)).all()
    # A chunk's offset is index * chunk_size; an upload of one chunk may have none.
    chunk_size = upload.chunk_size or upload.bytes_received
    cut = upload.chunk_size if upload.protocol == "tus" else None
    return [
        PlacedPart(
            c.index,
            c.offset if c.offset is not None else c.index * chunk_size,
            c.size,
            c.placed,
            cut,
        )
        for c in rows
    ]


@dataclass(frozen=True)
class Source:
    """A tus partial upload that a final upload joins: its storage upload, the key it is
    completed into, and its parts."""

    storage_id: str
    key: str
    parts: list[PlacedPart]


def sources_for_assembly(upload: Upload) -> list[Source]:
    """The partial uploads a tus final upload is made of, in order (none for others)."""
    return [
        Source(
            s["storage_id"],
            s["key"],
            [PlacedPart(i, offset, size, True, s["part_size"]) for i, offset, size in s["parts"]],
        )
        for s in upload.sources or []
    ]


def stale_uploads(session: Session, now: datetime, max_age: int) -> list[int]:
    """Ids of jobs whose upload sat unfinished longer than `max_age` seconds."""
    cutoff = now - timedelta(seconds=max_age)
    return list(
        session.scalars(
            select(Upload.job_id)
            .where(Upload.completed_at.is_(None), Upload.touched_at < cutoff)
            .order_by(Upload.job_id)
        )
    )


def expire_upload(session: Session, job_id: int, now: datetime, max_age: int) -> str | None:
    """Mark the job `upload_expired` and forget its upload, if the upload is still unfinished
    and stale; return its storage id for the caller to remove, or None if nothing changed.

    One transaction per upload, locking the job then the upload as recording a part
    does (the other order could deadlock with it). A job busy in another transaction is
    skipped: it is being touched, and the next sweep sees it again. An upload that never
    showed (no part recorded, not created by tus) is only removed: its job never left
    `awaiting_upload`.
    """
    cutoff = now - timedelta(seconds=max_age)
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update(skip_locked=True))
    upload = (
        None
        if job is None
        else session.scalar(
            select(Upload)
            .where(
                Upload.job_id == job_id,
                Upload.completed_at.is_(None),
                Upload.touched_at < cutoff,
            )
            .with_for_update(skip_locked=True)
        )
    )
    if upload is None or (
        started(upload)
        and not transition(
            session,
            job_id,
            [JobStatus.UPLOADING, JobStatus.AWAITING_UPLOAD],
            JobStatus.UPLOAD_EXPIRED,
            finished_at=now,
        )
    ):
        session.rollback()
        return None
    storage_id, expired = upload.storage_id, started(upload)
    session.execute(delete(Chunk).where(Chunk.job_id == job_id))
    session.delete(upload)
    session.commit()
    if expired:
        upload_expired()
    return storage_id
