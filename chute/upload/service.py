"""The rules of an upload, kept in the database: opening, recording, completing, discarding.

Each function is one short transaction. The upload row is locked (`FOR UPDATE`; on
SQLite every transaction takes the write lock up front) before it is read, so two
chunks recorded at once see each other and exactly one of them completes the set.
No transaction is ever held open while chunk bytes stream in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chute.config import Settings
from chute.db.models import Chunk, Job, JobStatus, Upload, utcnow
from chute.errors import ChuteError, Problem
from chute.jobs.service import expires_at, get_owned_job, input_key, transition
from chute.storage import StagedPart, Storage
from chute.upload.protocol import ChunkRequest

COMPLETE_STATUSES = {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED}


@dataclass(frozen=True)
class ChunkPlan:
    """What the receiver needs to take a chunk's bytes."""

    storage_id: str
    # Where the chunk starts in the file, or None while the chunk size is unknown.
    offset: int | None
    # Most bytes the chunk may have; `over_limit` is raised past it.
    limit: int
    over_limit: ChuteError
    # The upload is complete: the chunk can only be a re-send, compared and never written.
    complete: bool
    params: dict[str, Any]


@dataclass(frozen=True)
class Recorded:
    duplicate: bool  # the same bytes were already recorded
    upload_complete: bool  # the set is complete (now or before)
    completed_now: bool  # this request's commit completed it: queue the job
    expires_at: datetime | None  # when the unfinished upload expires


def _size_conflict(what: str) -> ChuteError:
    return ChuteError(Problem.CHUNK_SIZE_DIFFERS, what=what)


def _file_size_conflict(what: str) -> ChuteError:
    return ChuteError(Problem.FILE_SIZE_DIFFERS, what=what)


def _file_size(upload: Upload, req: ChunkRequest) -> int | None:
    """The file's size as far as it is known: as a recorded chunk said it, else as this
    request says it. It binds the upload only once a chunk that carries it is recorded,
    so a refused request that named a wrong file_size leaves nothing behind."""
    return upload.file_size if upload.file_size is not None else req.file_size


def _staged_last_size(session: Session, upload: Upload) -> int | None:
    return session.scalar(
        select(Chunk.size).where(
            Chunk.job_id == upload.job_id, Chunk.index == upload.total_chunks - 1
        )
    )


def _fix_chunk_size(
    session: Session, upload: Upload, chunk_size: int, file_size: int | None
) -> None:
    """Set the upload's chunk size, once, checking what is already known against it."""
    last = _staged_last_size(session, upload)
    if last is not None and last > chunk_size:
        raise _size_conflict(
            f"chunk_size {chunk_size} is smaller than the last chunk already stored ({last} bytes)"
        )
    _check_file_size(file_size, chunk_size, upload.total_chunks)
    if last is not None and file_size is not None:
        _check_last_chunk(file_size, chunk_size, upload.total_chunks, last)
    upload.chunk_size = chunk_size


def _check_last_chunk(file_size: int, chunk_size: int, total: int, last: int) -> None:
    made = (total - 1) * chunk_size + last
    if made != file_size:
        raise _file_size_conflict(
            f"file_size is {file_size}, but {total - 1} chunks of {chunk_size} bytes and the "
            f"last chunk already stored ({last} bytes) make a file of {made} bytes"
        )


def _check_new_file_size(session: Session, upload: Upload, file_size: int) -> None:
    """Check a file_size that this upload had not been told against what it holds."""
    _check_file_size(file_size, upload.chunk_size, upload.total_chunks)
    if upload.bytes_received > file_size:
        raise _file_size_conflict(
            f"file_size is {file_size}, but the chunks already stored hold "
            f"{upload.bytes_received} bytes"
        )
    last = _staged_last_size(session, upload)
    if last is not None and upload.chunk_size is not None:
        _check_last_chunk(file_size, upload.chunk_size, upload.total_chunks, last)


def _check_file_size(file_size: int | None, chunk_size: int | None, total: int) -> None:
    if file_size is None or chunk_size is None:
        return
    expected = -(-file_size // chunk_size)
    if expected != total:
        raise _file_size_conflict(
            f"a file of {file_size} bytes in chunks of {chunk_size} bytes has {expected} chunks, "
            f"not total_chunks {total}"
        )


def _check_against_upload(upload: Upload, req: ChunkRequest) -> None:
    if req.total_chunks != upload.total_chunks:
        raise ChuteError(
            Problem.TOTAL_CHUNKS_DIFFERS, got=req.total_chunks, expected=upload.total_chunks
        )
    if req.chunk_size is not None and upload.chunk_size not in (None, req.chunk_size):
        raise _size_conflict(
            f"chunk_size is {req.chunk_size}, but this upload's chunk size is {upload.chunk_size}"
        )
    if req.file_size is not None and upload.file_size not in (None, req.file_size):
        raise _file_size_conflict(
            f"file_size is {req.file_size}, but earlier chunks said {upload.file_size}"
        )


def _expected_size(
    upload: Upload, index: int, file_size: int | None
) -> tuple[int | None, int | None]:
    """(exact size, most bytes) of chunk `index` by the chunk size, as far as it is known."""
    cs = upload.chunk_size
    if cs is None:
        return None, None
    if index < upload.total_chunks - 1:
        return cs, cs
    if file_size is not None:
        last = file_size - (upload.total_chunks - 1) * cs
        return last, last
    return None, cs


def _room_left(file_size: int, others: int, index: int) -> ChuteError:
    return _file_size_conflict(
        f"chunk {index} has more than the {file_size - others} bytes of the file "
        f"(file_size {file_size}) that are not stored yet"
    )


def check_part_rules(storage: Storage, req: ChunkRequest, size: int | None) -> None:
    """Refuse a chunk that the storage's part rules (S3: at most 10,000 parts, every part
    but the last at least 5 MiB) can never take, before anything is opened or stored.
    `size` is the chunk's size when known before its bytes."""
    if storage.max_parts is not None and req.total_chunks > storage.max_parts:
        raise ChuteError(Problem.TOO_MANY_PARTS, total=req.total_chunks, limit=storage.max_parts)
    if req.total_chunks == 1:
        return
    for small in (req.chunk_size, None if req.is_last else size):
        if small is not None and small < storage.min_part_size:
            raise ChuteError(Problem.CHUNK_TOO_SMALL, size=small, minimum=storage.min_part_size)


def open_upload(
    session: Session, storage: Storage, settings: Settings, user_id: int, req: ChunkRequest
) -> ChunkPlan:
    """Check a chunk's fields against its job and upload, creating the upload if needed."""
    job = get_owned_job(session, user_id, req.job_id, lock=True)
    upload = session.scalar(select(Upload).where(Upload.job_id == job.id).with_for_update())
    if upload is not None and upload.completed_at is not None:
        _check_against_upload(upload, req)
        if req.file_size is not None and req.file_size != upload.bytes_received:
            raise _file_size_conflict(
                f"file_size is {req.file_size}, but the upload is complete with "
                f"{upload.bytes_received} bytes"
            )
        session.commit()
        return ChunkPlan(
            upload.storage_id, None, settings.max_chunk_bytes,
            ChuteError(Problem.CHUNK_TOO_LARGE, limit=settings.max_chunk_bytes), True, job.params,
        )  # fmt: skip
    if job.status not in (JobStatus.AWAITING_UPLOAD, JobStatus.UPLOADING):
        raise ChuteError(Problem.NOT_ACCEPTING_DATA, status=job.status.value)
    begun: str | None = None  # storage this call started: removed again if the call fails
    replaced: str | None = None
    try:
        if upload is None:
            upload = _create_upload(session, storage, job, req)
            begun = upload.storage_id
        elif upload.chunks_received == 0 and _shape_differs(upload, req):
            replaced = _start_over(storage, upload, req)
            begun = upload.storage_id
        plan = _plan(session, settings, job, upload, req)
        session.commit()
    except BaseException:
        if begun is not None:
            storage.abort(begun)
        raise
    if replaced is not None:
        storage.abort(replaced)
    return plan


def _plan(
    session: Session, settings: Settings, job: Job, upload: Upload, req: ChunkRequest
) -> ChunkPlan:
    _check_against_upload(upload, req)
    file_size = _file_size(upload, req)
    if req.file_size is not None and upload.file_size is None:
        _check_new_file_size(session, upload, req.file_size)
    if req.chunk_size is not None and upload.chunk_size is None:
        _fix_chunk_size(session, upload, req.chunk_size, file_size)
    if upload.chunk_size is not None and upload.chunk_size * (req.total_chunks - 1) >= (
        settings.max_file_bytes
    ):
        raise ChuteError(Problem.FILE_TOO_LARGE, limit=settings.max_file_bytes)
    exact, most = _expected_size(upload, req.index, file_size)
    limit = settings.max_chunk_bytes
    over_limit = ChuteError(Problem.CHUNK_TOO_LARGE, limit=settings.max_chunk_bytes)
    if most is not None:
        named = f"file_size {file_size}, " if req.is_last and file_size is not None else ""
        limit, over_limit = (
            most,
            _size_conflict(
                f"chunk {req.index} is larger than the {exact or most} bytes it must have "
                f"in this upload ({named}chunk size {upload.chunk_size})"
            ),
        )
    elif file_size is not None:
        # The chunk size is not known yet: the chunk may have what the file has left.
        others = upload.bytes_received - _recorded_size(session, upload, req.index)
        if file_size - others < limit:
            limit, over_limit = file_size - others, _room_left(file_size, others, req.index)
    return ChunkPlan(
        storage_id=upload.storage_id,
        offset=None if upload.chunk_size is None else req.index * upload.chunk_size,
        limit=limit,
        over_limit=over_limit,
        complete=False,
        params=job.params,
    )


def _recorded_size(session: Session, upload: Upload, index: int) -> int:
    """The size of chunk `index` if it is recorded (a re-send is compared, not added), or 0."""
    chunk = session.get(Chunk, (upload.job_id, index))
    return 0 if chunk is None else chunk.size


def _create_upload(session: Session, storage: Storage, job: Job, req: ChunkRequest) -> Upload:
    _check_file_size(req.file_size, req.chunk_size, req.total_chunks)
    storage_id = storage.begin(input_key(job.id))
    upload = Upload(
        job_id=job.id,
        storage_id=storage_id,
        file_name=req.file_name,
        total_chunks=req.total_chunks,
        chunk_size=req.chunk_size,
    )
    # The job stays `awaiting_upload` until a chunk is recorded: a refused first chunk
    # changes nothing a client can see.
    session.add(upload)
    try:
        session.flush()
    except IntegrityError:
        storage.abort(storage_id)
        raise
    return upload


def _shape_differs(upload: Upload, req: ChunkRequest) -> bool:
    """The request contradicts what earlier requests said about the upload's sizes."""
    return req.total_chunks != upload.total_chunks or (
        req.chunk_size is not None and upload.chunk_size not in (None, req.chunk_size)
    )


def _start_over(storage: Storage, upload: Upload, req: ChunkRequest) -> str:
    """Give an upload with no chunk recorded the request's shape; return the old storage id.

    Such a shape came only from requests that all failed, and bad input must bind nothing
    (a client that sent the wrong file may send the right one, of other sizes). The upload
    moves to fresh storage, so a request still writing by the old shape cannot record its
    bytes in the new one: it answers that the upload was replaced.
    """
    _check_file_size(req.file_size, req.chunk_size, req.total_chunks)
    replaced = upload.storage_id
    upload.storage_id = storage.begin(input_key(upload.job_id))
    upload.file_name = req.file_name
    upload.total_chunks = req.total_chunks
    upload.chunk_size = req.chunk_size
    upload.touched_at = utcnow()
    return replaced


def record_chunk(
    session: Session,
    settings: Settings,
    user_id: int,
    req: ChunkRequest,
    storage_id: str,
    size: int,
    sha256: str,
    placed: bool,
) -> Recorded:
    """Record a chunk whose bytes are durably stored; complete the upload if it is the last.

    The job moves to `queued` in this same transaction when the set becomes complete,
    and only the transaction that moves it reports `completed_now`.
    """
    job = get_owned_job(session, user_id, req.job_id, lock=True)
    upload = session.scalar(select(Upload).where(Upload.job_id == job.id).with_for_update())
    if upload is None or upload.storage_id != storage_id:
        raise ChuteError(Problem.UPLOAD_REPLACED)
    existing = session.get(Chunk, (job.id, req.index))
    if existing is not None:
        if existing.sha256 != sha256:
            raise ChuteError(Problem.CHUNK_CONFLICT, index=req.index)
        session.commit()
        return Recorded(
            True, upload.completed_at is not None, False, expires_at(upload, settings.upload_expiry)
        )
    if job.status not in (JobStatus.AWAITING_UPLOAD, JobStatus.UPLOADING):
        raise ChuteError(Problem.NOT_ACCEPTING_DATA, status=job.status.value)
    _check_against_upload(upload, req)
    file_size = _file_size(upload, req)
    if req.file_size is not None and upload.file_size is None:
        _check_new_file_size(session, upload, req.file_size)
    if not req.is_last and upload.chunk_size is None:
        _fix_chunk_size(session, upload, size, file_size)
    exact, most = _expected_size(upload, req.index, file_size)
    if exact is not None and size != exact:
        raise _size_conflict(
            f"chunk {req.index} has {size} bytes, but it must have {exact} in this upload "
            + (
                f"(file_size {file_size}, chunk size {upload.chunk_size})"
                if req.is_last
                else f"(chunk size {upload.chunk_size}; only the last chunk may be smaller)"
            )
        )
    if most is not None and size > most:
        raise _size_conflict(
            f"the last chunk has {size} bytes, more than the chunk size {upload.chunk_size}"
        )
    completes = upload.chunks_received + 1 == upload.total_chunks
    if file_size is not None:
        stored = upload.bytes_received + size
        if stored > file_size:
            raise _file_size_conflict(
                f"chunk {req.index} has {size} bytes, but only "
                f"{file_size - upload.bytes_received} of the file's {file_size} bytes "
                "(file_size) are not stored yet"
            )
        if completes and stored != file_size:
            # With a chunk size the exact sizes above already add up to file_size; this is
            # a single chunk shorter than it. DESIGN §2: 409, and the upload stays open.
            raise _file_size_conflict(
                f"the chunks add up to {stored} bytes, not the file_size {file_size}"
            )
        upload.file_size = file_size
    now = utcnow()
    transition(session, job.id, [JobStatus.AWAITING_UPLOAD], JobStatus.UPLOADING)
    session.add(Chunk(job_id=job.id, index=req.index, size=size, sha256=sha256, placed=placed))
    upload.chunks_received += 1
    upload.bytes_received += size
    upload.touched_at = now
    completed_now = False
    if completes:
        completed_now = transition(
            session, job.id, [JobStatus.UPLOADING], JobStatus.QUEUED, queued_at=now
        )
        if completed_now:
            upload.completed_at = now
    session.commit()
    return Recorded(False, completed_now, completed_now, expires_at(upload, settings.upload_expiry))


def held_open(session: Session, job_id: int, storage_id: str) -> bool:
    """Whether the database still holds the upload `storage_id` open.

    Asked when the storage says such an upload does not exist. If the database no longer
    holds it either, it was discarded (or replaced) while the chunk was sent: the client is
    told so. If it still does, the storage lost it, or this API process stores elsewhere
    than the one that began it (a CHUTE_STORAGE_URL that differs): a fault of the server.
    """
    upload = session.get(Upload, job_id)
    return upload is not None and upload.storage_id == storage_id and upload.completed_at is None


def started(upload: Upload | None) -> bool:
    """An upload shows once a chunk is recorded; before, it is only the server's bookkeeping."""
    return upload is not None and upload.chunks_received > 0


def is_recorded(session: Session, req: ChunkRequest) -> bool:
    return session.get(Chunk, (req.job_id, req.index)) is not None


def is_recorded_for(session: Session, user_id: int, req: ChunkRequest) -> bool:
    """`is_recorded`, for the user's own job only (another's job answers 404)."""
    get_owned_job(session, user_id, req.job_id)
    return is_recorded(session, req)


def check_takes_data(session: Session, user_id: int, job_id: int) -> None:
    """Refuse what `open_upload` refuses whatever the chunk's fields: a job that is not the
    user's (404) or no longer takes data (409); a complete upload still takes re-sends.
    For a file part sent before the fields, checked before any of its bytes is kept."""
    job = get_owned_job(session, user_id, job_id)
    if job.status in (JobStatus.AWAITING_UPLOAD, JobStatus.UPLOADING):
        return
    upload = session.get(Upload, job.id)
    if upload is None or upload.completed_at is None:
        raise ChuteError(Problem.NOT_ACCEPTING_DATA, status=job.status.value)


def upload_status(
    session: Session, user_id: int, job_id: int, expiry_seconds: int
) -> dict[str, Any]:
    job = get_owned_job(session, user_id, job_id)
    upload = session.get(Upload, job.id)
    answer: dict[str, Any] = {
        "job_id": job.id,
        "state": "empty",
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
        total_chunks=upload.total_chunks,
        chunk_size=upload.chunk_size,
        file_size=upload.file_size,
        bytes_received=upload.bytes_received,
        chunks=[{"index": c.index, "size": c.size, "sha256": c.sha256} for c in chunks],
    )
    if upload.completed_at is None:
        answer["expires_at"] = expires_at(upload, expiry_seconds)
    return answer


def discard_upload(session: Session, user_id: int, job_id: int) -> str | None:
    """Forget an unfinished upload; return its storage id for the caller to remove."""
    job = get_owned_job(session, user_id, job_id, lock=True)
    upload = session.scalar(select(Upload).where(Upload.job_id == job.id).with_for_update())
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


def staged_parts(session: Session, job_id: int) -> list[StagedPart]:
    rows = session.scalars(
        select(Chunk).where(Chunk.job_id == job_id, Chunk.placed.is_(False)).order_by(Chunk.index)
    ).all()
    return [StagedPart(c.index, c.size) for c in rows]


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

    One transaction per upload, locking the job then the upload as recording a chunk
    does (the other order could deadlock with it). A job busy in another transaction is
    skipped: it is being touched, and the next sweep sees it again. An upload with no
    chunk recorded is only removed: its job never left `awaiting_upload`.
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
            session, job_id, [JobStatus.UPLOADING], JobStatus.UPLOAD_EXPIRED, finished_at=now
        )
    ):
        session.rollback()
        return None
    storage_id = upload.storage_id
    session.execute(delete(Chunk).where(Chunk.job_id == job_id))
    session.delete(upload)
    session.commit()
    return storage_id
