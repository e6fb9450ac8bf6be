"""The tus front door's records: uploads by their tus id, partial uploads, final uploads.

A tus upload of a job is that job's `Upload` (protocol "tus"), whose parts are the
core's. A partial upload (concatenation) belongs to no job yet: it is a `TusPartial` with
parts of its own, until a final upload names it. The final upload is then created whole
in one transaction: the job's upload, complete, made of the partials' parts end to end,
its job queued; the partials' rows go, and `Upload.sources` tells the worker which
stored uploads to join (`Storage.concatenate`), so no byte moves in the request.

Every function is one short transaction, locking what it reads (as `chute.upload.core`).
A tus id that is not the user's answers as one that does not exist (404).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from chute.config import Settings
from chute.db.jobs import expires_at, get_owned_job, input_key
from chute.db.models import Job, TusPartial, TusPartialPart, Upload, utcnow
from chute.errors import ChuteError, Problem
from chute.storage import Storage
from chute.upload import core, quota
from chute.upload.csvcheck import CsvStartCheck
from chute.upload.stream import storage_errors

TUS_ID_LENGTH = 32


@dataclass(frozen=True)
class TusState:
    """What HEAD answers, and what a PATCH streams against."""

    tus_id: str
    # None for a partial upload, which has no job yet.
    job_id: int | None
    storage_id: str
    offset: int
    length: int
    part_size: int
    next_index: int
    metadata: str | None
    expires_at: datetime | None
    complete: bool
    # The job's params (for the CSV check of the file's first bytes); None for a partial.
    params: dict[str, Any] | None
    # Upload-Concat, as HEAD answers it: "partial", "final;<paths>", or None.
    concat: str | None = None


def _state(upload: Upload, job: Job, settings: Settings) -> TusState:
    assert upload.tus_id is not None and upload.file_size is not None
    return TusState(
        tus_id=upload.tus_id,
        job_id=job.id,
        storage_id=upload.storage_id,
        offset=upload.bytes_received,
        length=upload.file_size,
        part_size=upload.chunk_size or upload.file_size,
        next_index=upload.chunks_received,
        metadata=upload.tus_metadata,
        expires_at=expires_at(upload, settings.upload_expiry),
        complete=upload.completed_at is not None,
        params=dict(job.params),
        concat=None
        if upload.sources is None
        else "final;" + " ".join(f"/api/tus/{s['tus_id']}" for s in upload.sources),
    )


def _partial_state(partial: TusPartial, settings: Settings) -> TusState:
    return TusState(
        tus_id=partial.tus_id,
        job_id=None,
        storage_id=partial.storage_id,
        offset=partial.bytes_received,
        length=partial.length,
        part_size=partial.part_size,
        next_index=partial.parts_received,
        metadata=partial.tus_metadata,
        expires_at=partial.touched_at + timedelta(seconds=settings.upload_expiry),
        complete=partial.completed_at is not None,
        params=None,
        concat="partial",
    )


def check_length(settings: Settings, length: int) -> None:
    if length < 1:
        raise ChuteError(Problem.EMPTY_FILE)
    if length > settings.max_file_bytes:
        raise ChuteError(Problem.FILE_TOO_LARGE, limit=settings.max_file_bytes)


def _new_tus_id() -> str:
    return secrets.token_hex(TUS_ID_LENGTH // 2)


def _job_taking_an_upload(
    session: Session, storage: Storage, user_id: int, job_id: int
) -> tuple[Job, str | None]:
    """The user's job, locked, ready for a new upload; and the storage id of an upload it
    had with no byte recorded (say a creation whose answer was lost), now dropped, for
    the caller to remove once committed. A job with bytes recorded keeps its upload (409)."""
    job, upload = core.locked(session, user_id, job_id)
    core.check_takes_data(job)
    if upload is None:
        return job, None
    if upload.chunks_received > 0 or upload.completed_at is not None:
        raise ChuteError(Problem.UPLOAD_EXISTS)
    session.delete(upload)
    session.flush()
    return job, upload.storage_id


def _tus_upload(
    storage: Storage,
    settings: Settings,
    job: Job,
    storage_id: str,
    length: int,
    metadata: str | None,
    file_name: str | None,
) -> Upload:
    """A job's tus upload row: its file's length known, so its part size too."""
    return Upload(
        job_id=job.id,
        storage_id=storage_id,
        file_name=file_name,
        protocol="tus",
        tus_id=_new_tus_id(),
        tus_metadata=metadata,
        total_chunks=None,
        chunk_size=storage.part_size(settings.chunk_size, length),
        file_size=length,
    )


def create_upload(
    session: Session,
    storage: Storage,
    settings: Settings,
    user_id: int,
    job_id: int,
    length: int,
    metadata: str | None,
    file_name: str | None,
) -> TusState:
    """A tus upload of `length` bytes for the user's job, which must await its upload."""
    check_length(settings, length)
    job, replaced = _job_taking_an_upload(session, storage, user_id, job_id)
    # The whole length counts from the creation on: its PATCHes then never pass the quota.
    quota.check_new(session, settings, user_id, length)
    with storage_errors():
        storage_id = storage.begin(input_key(job.id))
    upload = _tus_upload(storage, settings, job, storage_id, length, metadata, file_name)
    session.add(upload)
    try:
        session.commit()
    except BaseException:
        storage.abort(storage_id)
        raise
    if replaced is not None:
        storage.abort(replaced)
    return _state(upload, job, settings)


def partial_key(tus_id: str) -> str:
    """Where a partial upload's bytes are stored once its final upload's job starts."""
    return f"tus-partials/{tus_id}"


def create_partial(
    session: Session,
    storage: Storage,
    settings: Settings,
    user_id: int,
    length: int,
    metadata: str | None,
) -> TusState:
    """A partial upload (concatenation): bytes for a final upload to name later."""
    check_length(settings, length)
    quota.check_new(session, settings, user_id, length)
    tus_id = _new_tus_id()
    with storage_errors():
        storage_id = storage.begin(partial_key(tus_id))
    partial = TusPartial(
        tus_id=tus_id,
        user_id=user_id,
        storage_id=storage_id,
        length=length,
        part_size=storage.part_size(settings.chunk_size, length),
        tus_metadata=metadata,
    )
    session.add(partial)
    try:
        session.commit()
    except BaseException:
        storage.abort(storage_id)
        raise
    return _partial_state(partial, settings)


def tus_id_of(url: str) -> str:
    """The tus id at the end of an upload's URL (absolute, or a path)."""
    tus_id = urlsplit(url.strip()).path.rstrip("/").rsplit("/", 1)[-1]
    if len(tus_id) != TUS_ID_LENGTH or not all(c in "0123456789abcdef" for c in tus_id):
        raise ChuteError(
            Problem.TUS_BAD_HEADER, what="Upload-Concat names an upload that is not one"
        )
    return tus_id


def create_final(
    session: Session,
    storage: Storage,
    settings: Settings,
    user_id: int,
    job_id: int,
    partial_ids: list[str],
    metadata: str | None,
    file_name: str | None,
) -> tuple[TusState, bool]:
    """The final upload of the user's job: the finished partial uploads `partial_ids`, in
    order, end to end. It is complete at once; returns its state and whether this call
    queued the job (the caller then enqueues it)."""
    if not partial_ids or len(set(partial_ids)) != len(partial_ids):
        raise ChuteError(
            Problem.TUS_BAD_HEADER, what="Upload-Concat must name partial uploads, each once"
        )
    job, replaced = _job_taking_an_upload(session, storage, user_id, job_id)
    partials = []
    for tus_id in partial_ids:
        partial = _locked_partial(session, user_id, tus_id)
        if partial.completed_at is None:
            raise ChuteError(Problem.PARTIAL_UNFINISHED)
        partials.append(partial)
    length = sum(p.length for p in partials)
    check_length(settings, length)
    # The file's first bytes are the first partial's: checked as CSV, as chunk 0 is.
    head = partials[0].head or b""
    check = CsvStartCheck(job.params)
    check.feed(head)
    check.finish(whole_file=len(head) == length)
    with storage_errors():
        storage_id = storage.begin(input_key(job.id))
    sources: list[dict[str, Any]] = []
    parts: list[core.NewPart] = []
    start = 0
    for partial in partials:
        rows = session.scalars(
            select(TusPartialPart)
            .where(TusPartialPart.tus_id == partial.tus_id)
            .order_by(TusPartialPart.index)
        ).all()
        sources.append(
            {
                "tus_id": partial.tus_id,
                "storage_id": partial.storage_id,
                "key": partial_key(partial.tus_id),
                "part_size": partial.part_size,
                "parts": [[r.index, r.offset, r.size] for r in rows],
            }
        )
        parts += [
            core.NewPart(len(parts) + i, r.size, r.sha256, start + r.offset)
            for i, r in enumerate(rows)
        ]
        start += partial.length
        session.delete(partial)
    upload = _tus_upload(storage, settings, job, storage_id, length, metadata, file_name)
    upload.sources = sources
    session.add(upload)
    session.flush()
    try:
        queued = core.record_parts(session, job, upload, parts)
    except BaseException:
        storage.abort(storage_id)
        raise
    if replaced is not None:
        storage.abort(replaced)
    return _state(upload, job, settings), queued


def _locked_partial(session: Session, user_id: int, tus_id: str) -> TusPartial:
    """The user's partial upload `tus_id`, locked; 404 for another user's or none."""
    partial = session.scalar(
        select(TusPartial)
        .where(TusPartial.tus_id == tus_id, TusPartial.user_id == user_id)
        .with_for_update()
    )
    if partial is None:
        raise ChuteError(Problem.TUS_UPLOAD_NOT_FOUND)
    return partial


def _locked_by_id(session: Session, user_id: int, tus_id: str) -> tuple[Job, Upload] | TusPartial:
    """The user's tus upload `tus_id` (and its job) or partial upload, locked; 404 for
    another user's."""
    job_id = session.scalar(
        select(Upload.job_id).where(Upload.tus_id == tus_id, Upload.protocol == "tus")
    )
    if job_id is None:
        return _locked_partial(session, user_id, tus_id)
    try:
        job, upload = core.locked(session, user_id, job_id)
    except ChuteError:
        raise ChuteError(Problem.TUS_UPLOAD_NOT_FOUND) from None
    if upload is None or upload.tus_id != tus_id:
        raise ChuteError(Problem.TUS_UPLOAD_NOT_FOUND)
    return job, upload


def state_of(session: Session, settings: Settings, user_id: int, tus_id: str) -> TusState:
    found = _locked_by_id(session, user_id, tus_id)
    state = (
        _partial_state(found, settings)
        if isinstance(found, TusPartial)
        else _state(found[1], found[0], settings)
    )
    session.commit()
    return state


def open_patch(
    session: Session, settings: Settings, user_id: int, tus_id: str, offset: int
) -> TusState:
    """Check a PATCH against the upload before any byte moves: 409 unless it starts at
    the upload's offset, and unless its job still takes data."""
    found = _locked_by_id(session, user_id, tus_id)
    if isinstance(found, TusPartial):
        state = _partial_state(found, settings)
    else:
        state = _state(found[1], found[0], settings)
        if not state.complete:
            core.check_takes_data(found[0])
    session.commit()
    if offset != state.offset:
        raise ChuteError(Problem.OFFSET_DIFFERS, sent=offset, offset=state.offset)
    return state


def _check_at(found: tuple[Job, Upload] | TusPartial, storage_id: str, offset: int) -> None:
    if isinstance(found, TusPartial):
        upload_storage, received = found.storage_id, found.bytes_received
    else:
        job, upload = found
        upload_storage, received = upload.storage_id, upload.bytes_received
        core.check_takes_data(job)
    if upload_storage != storage_id:
        raise ChuteError(Problem.UPLOAD_REPLACED)
    if received != offset:
        raise ChuteError(Problem.OFFSET_DIFFERS, sent=offset, offset=received)


def still_at(session: Session, user_id: int, tus_id: str, storage_id: str, offset: int) -> None:
    """Under a part's lock: the upload is still this one, and still at `offset`."""
    found = _locked_by_id(session, user_id, tus_id)
    session.commit()
    _check_at(found, storage_id, offset)


def record(
    session: Session,
    user_id: int,
    tus_id: str,
    storage_id: str,
    parts: list[core.NewPart],
    head: bytes | None = None,
) -> bool:
    """Record parts that continue the upload; True if this completed a job's upload."""
    found = _locked_by_id(session, user_id, tus_id)
    _check_at(found, storage_id, parts[0].offset or 0)
    if not isinstance(found, TusPartial):
        job, upload = found
        return core.record_parts(session, job, upload, parts)
    if parts[0].offset == 0:
        found.head = head
    for part in parts:
        assert part.offset is not None
        session.add(
            TusPartialPart(
                tus_id=tus_id, index=part.index, offset=part.offset, size=part.size,
                sha256=part.sha256,
            )
        )  # fmt: skip
        found.parts_received += 1
        found.bytes_received += part.size
    found.touched_at = utcnow()
    if found.bytes_received == found.length:
        found.completed_at = found.touched_at
    session.commit()
    return False


def held_open(session: Session, tus_id: str, storage_id: str) -> bool:
    """`core.held_open`, for a job's tus upload or a partial upload."""
    partial = session.get(TusPartial, tus_id)
    if partial is not None:
        return partial.storage_id == storage_id
    upload = session.scalar(select(Upload).where(Upload.tus_id == tus_id))
    return upload is not None and core.held_open(session, upload.job_id, storage_id)


def discard(session: Session, user_id: int, tus_id: str) -> str | None:
    """Forget an unfinished upload (a finished partial too); its storage id, to remove."""
    found = _locked_by_id(session, user_id, tus_id)
    if isinstance(found, TusPartial):
        session.delete(found)
        session.commit()
        return found.storage_id
    job, upload = found
    return core.discard(session, job, upload)


def job_for(session: Session, user_id: int, job_id: int) -> int:
    """The job a creation names, if it is the user's (404 otherwise)."""
    return get_owned_job(session, user_id, job_id).id


def stale_partials(session: Session, now: datetime, max_age: int) -> list[str]:
    """Partial uploads no final upload took, untouched longer than `max_age` seconds."""
    cutoff = now - timedelta(seconds=max_age)
    return list(
        session.scalars(
            select(TusPartial.tus_id)
            .where(TusPartial.touched_at < cutoff)
            .order_by(TusPartial.tus_id)
        )
    )


def expire_partial(session: Session, tus_id: str, now: datetime, max_age: int) -> str | None:
    """Forget a stale partial upload; its storage id for the caller to remove, or None if
    it is busy or was touched meanwhile."""
    cutoff = now - timedelta(seconds=max_age)
    partial = session.scalar(
        select(TusPartial)
        .where(TusPartial.tus_id == tus_id, TusPartial.touched_at < cutoff)
        .with_for_update(skip_locked=True)
    )
    if partial is None:
        session.rollback()
        return None
    session.delete(partial)
    session.commit()
    return partial.storage_id
