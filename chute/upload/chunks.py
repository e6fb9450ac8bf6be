"""The chunk protocol's rules, over the upload core: a chunk is the part at
`index * chunk_size`, and the upload completes when all `total_chunks` are recorded.

What is checked here is the chunk endpoint's own contract (DESIGN §2): `total_chunks`,
the chunk size fixed once, the last chunk not larger, `file_size` binding once recorded.
Recording and completing are the core's (`chute.upload.core`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chute.config import Settings
from chute.db.jobs import expires_at, get_owned_job, input_key
from chute.db.models import Chunk, Job, Upload, utcnow
from chute.errors import ChuteError, Problem
from chute.storage import Storage
from chute.upload import core, quota
from chute.upload.protocol import ChunkRequest


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
    # The upload's chunk size, once known.
    chunk_size: int | None = None


@dataclass(frozen=True)
class StoredChunk:
    """A chunk's bytes, durably stored in the upload `storage_id`."""

    storage_id: str
    size: int
    sha256: str
    # Written at its offset (False: kept aside while the chunk size was not known).
    placed: bool


@dataclass(frozen=True)
class Recorded:
    duplicate: bool  # the same bytes were already recorded
    upload_complete: bool  # the set is complete (now or before)
    completed_now: bool  # this request's commit completed it: queue the job
    expires_at: datetime | None  # when the unfinished upload expires


def _total(upload: Upload) -> int:
    """A chunk upload's number of chunks (only tus uploads have none)."""
    assert upload.total_chunks is not None
    return upload.total_chunks


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
        select(Chunk.size).where(Chunk.job_id == upload.job_id, Chunk.index == _total(upload) - 1)
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
    _check_file_size(file_size, chunk_size, _total(upload))
    if last is not None and file_size is not None:
        _check_last_chunk(file_size, chunk_size, _total(upload), last)
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
    _check_file_size(file_size, upload.chunk_size, _total(upload))
    if upload.bytes_received > file_size:
        raise _file_size_conflict(
            f"file_size is {file_size}, but the chunks already stored hold "
            f"{upload.bytes_received} bytes"
        )
    last = _staged_last_size(session, upload)
    if last is not None and upload.chunk_size is not None:
        _check_last_chunk(file_size, upload.chunk_size, _total(upload), last)


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
    if index < _total(upload) - 1:
        return cs, cs
    if file_size is not None:
        last = file_size - (_total(upload) - 1) * cs
        return last, last
    return None, cs


def _room_left(file_size: int, others: int, index: int) -> ChuteError:
    return _file_size_conflict(
        f"chunk {index} has more than the {file_size - others} bytes of the file "
        f"(file_size {file_size}) that are not stored yet"
    )


def check_part_count(storage: Storage, req: ChunkRequest) -> None:
    """Refuse an upload of more chunks than the storage takes parts, before any byte moves."""
    if storage.max_parts is not None and req.total_chunks > storage.max_parts:
        raise ChuteError(Problem.TOO_MANY_PARTS, total=req.total_chunks, limit=storage.max_parts)


def _check_protocol(upload: Upload | None) -> None:
    if upload is not None and upload.protocol != "chunks":
        raise ChuteError(Problem.UPLOAD_IS_TUS)


def open_upload(
    session: Session, storage: Storage, settings: Settings, user_id: int, req: ChunkRequest
) -> ChunkPlan:
    """Check a chunk's fields against its job and upload, creating the upload if needed."""
    job, upload = core.locked(session, user_id, req.job_id)
    _check_protocol(upload)
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
    core.check_takes_data(job)
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
        chunk_size=upload.chunk_size,
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
    stored: StoredChunk,
) -> Recorded:
    """Record a chunk whose bytes are durably stored; complete the upload if it is the last.

    The job moves to `queued` in this same transaction when the set becomes complete,
    and only the transaction that moves it reports `completed_now`.
    """
    job, upload = core.locked(session, user_id, req.job_id)
    if upload is None or upload.storage_id != stored.storage_id:
        raise ChuteError(Problem.UPLOAD_REPLACED)
    existing = session.get(Chunk, (job.id, req.index))
    if existing is not None:
        if existing.sha256 != stored.sha256:
            raise ChuteError(Problem.CHUNK_CONFLICT, index=req.index)
        session.commit()
        return Recorded(
            True, upload.completed_at is not None, False, expires_at(upload, settings.upload_expiry)
        )
    core.check_takes_data(job)
    _check_against_upload(upload, req)
    counted_before = quota.unfinished(upload)
    size = stored.size
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
    if file_size is not None:
        stored_bytes = upload.bytes_received + size
        if stored_bytes > file_size:
            raise _file_size_conflict(
                f"chunk {req.index} has {size} bytes, but only "
                f"{file_size - upload.bytes_received} of the file's {file_size} bytes "
                "(file_size) are not stored yet"
            )
        if upload.chunks_received + 1 == upload.total_chunks and stored_bytes != file_size:
            # With a chunk size the exact sizes above already add up to file_size; this is
            # a single chunk shorter than it. DESIGN §2: 409, and the upload stays open.
            raise _file_size_conflict(
                f"the chunks add up to {stored_bytes} bytes, not the file_size {file_size}"
            )
        upload.file_size = file_size
    # Requests of another API process are not in this one's quota ledger: the database's
    # count is checked once more, the user's row locked (`chute.upload.quota`).
    counted_after = quota.Unfinished(
        upload.bytes_received + size,
        quota.chunk_floor(upload.file_size, upload.chunk_size, upload.total_chunks),
    )
    quota.check_record(
        session, settings, user_id, quota.job_key(job.id), counted_before, counted_after
    )
    offset = None if upload.chunk_size is None else req.index * upload.chunk_size
    completed_now = core.record_parts(
        session,
        job,
        upload,
        [core.NewPart(req.index, size, stored.sha256, offset, placed=stored.placed)],
    )
    return Recorded(False, completed_now, completed_now, expires_at(upload, settings.upload_expiry))


def is_recorded(session: Session, req: ChunkRequest) -> bool:
    return session.get(Chunk, (req.job_id, req.index)) is not None


def check_takes_data(session: Session, user_id: int, job_id: int) -> bool:
    """Refuse what `open_upload` refuses whatever the chunk's fields: a job that is not the
    user's (404) or no longer takes data (409); a complete upload still takes re-sends
    (then True: the chunk can only be one). For a file part sent before the fields,
    checked before any of its bytes is kept."""
    job = get_owned_job(session, user_id, job_id)
    upload = session.get(Upload, job.id)
    _check_protocol(upload)
    complete = upload is not None and upload.completed_at is not None
    if job.status not in core.TAKES_DATA and not complete:
        core.check_takes_data(job)
    return complete
