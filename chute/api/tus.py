"""The tus 1.0 front door (DESIGN §6): creation, HEAD, PATCH and DELETE at /api/tus/.

Thin: headers in, headers out. The rules are `chute.upload.tus`'s, the records the core's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chute.api.deps import CurrentUser, RuntimeDep
from chute.api.metrics import RefusalsCounted
from chute.db.models import utcnow
from chute.errors import ChuteError, Problem
from chute.jobs.service import create_job
from chute.runtime import Runtime
from chute.upload import tus
from chute.upload import tus_records as records
from chute.upload.stream import Body

router = APIRouter(prefix="/api/tus", tags=["tus"])
PREFIX = "/api/tus"


def _check_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != tus.VERSION:
        raise ChuteError(Problem.TUS_VERSION)


def _location(request: Request, tus_id: str) -> str:
    public = request.app.state.runtime.settings.public_url
    return f"{public}{PREFIX}/{tus_id}"


def _state_headers(state: records.TusState) -> dict[str, str]:
    headers = {"Upload-Offset": str(state.offset), "Upload-Length": str(state.length)}
    if state.job_id is not None:
        headers["Chute-Job-Id"] = str(state.job_id)
    if state.concat is not None:
        headers["Upload-Concat"] = state.concat
    if state.expires_at is not None:
        headers["Upload-Expires"] = format_datetime(state.expires_at, usegmt=True)
    return headers


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    # isascii: str.isdigit() also takes digits such as '²', which int() refuses.
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


def _has_body(request: Request) -> bool:
    length = _content_length(request)
    return (length or 0) > 0 or "chunked" in request.headers.get("transfer-encoding", "")


def _patch(request: Request, user_id: int) -> tus.TusPatch:
    app = request.app
    return tus.TusPatch(app.state.runtime, app.state.executor, app.state.upload_slots, user_id)


@router.options("", status_code=204, include_in_schema=False)
@router.options("/", status_code=204)
@router.options("/{tus_id}", status_code=204)
def options(rt: RuntimeDep) -> Response:
    """What this tus server speaks (no sign-in needed to ask)."""
    return Response(
        status_code=204,
        headers={
            "Tus-Version": tus.VERSION,
            "Tus-Extension": tus.EXTENSIONS,
            "Tus-Max-Size": str(rt.settings.max_file_bytes),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUMS),
        },
    )


@router.post("", status_code=201, include_in_schema=False, dependencies=[RefusalsCounted])
@router.post("/", status_code=201, dependencies=[RefusalsCounted])
async def create(request: Request, user: CurrentUser, rt: RuntimeDep) -> Response:
    """A new upload: `Upload-Length`, and `Upload-Metadata` naming the job (`job_id`) or
    the new job's `name` (and `kind`, `params`); the body may carry the first bytes.
    Concatenation: `Upload-Concat: partial` makes a partial upload of no job yet, and
    `Upload-Concat: final;<url> <url> ...` the job's upload from finished partials."""
    _check_version(request)
    concat = request.headers.get("upload-concat", "").strip()
    raw_metadata = request.headers.get("upload-metadata")
    metadata = tus.parse_metadata(raw_metadata)
    checksum = tus.parse_checksum(request.headers.get("upload-checksum"))
    body = _has_body(request)
    if body and request.headers.get("content-type") != tus.PATCH_TYPE:
        raise ChuteError(Problem.TUS_CONTENT_TYPE)
    patch = _patch(request, user.id)
    if concat.startswith("final;"):
        if body or request.headers.get("upload-length") is not None:
            raise tus.bad_header("a final upload has neither Upload-Length nor a body")
        partials = [records.tus_id_of(url) for url in concat.removeprefix("final;").split()]
        state, queued = await patch.path.in_thread(
            lambda: _create_final(rt, user.id, partials, raw_metadata, metadata)
        )
        if queued and state.job_id is not None:
            await patch.path.enqueue(state.job_id)
        headers = {"Location": _location(request, state.tus_id), **_state_headers(state)}
        return Response(status_code=201, headers=headers)
    if concat not in ("", "partial"):
        raise tus.bad_header("Upload-Concat must be partial, or final;<urls>")
    length = tus.parse_count("Upload-Length", request.headers.get("upload-length"))
    records.check_length(rt.settings, length)
    if concat == "partial":
        state = await patch.path.in_thread(
            lambda: _in_session(
                rt,
                lambda s: records.create_partial(
                    s, rt.storage, rt.settings, user.id, length, raw_metadata
                ),
            )
        )
    else:
        state = await patch.path.in_thread(
            lambda: _create_upload(rt, user.id, length, raw_metadata, metadata)
        )
    headers = {"Location": _location(request, state.tus_id), **_state_headers(state)}
    if body:
        # creation-with-upload: what the body carries is appended as by a PATCH. Should
        # that fail, the upload exists all the same and the client resumes it from HEAD.
        body_stream = Body(request.stream())
        offset = await patch.append(state, _content_length(request), checksum, body_stream)
        headers["Upload-Offset"] = str(offset)
    return Response(status_code=201, headers=headers)


T = TypeVar("T")


def _in_session(rt: Runtime, fn: Callable[[Session], T]) -> T:
    with rt.sessions() as session:
        return fn(session)


def _job_then(
    rt: Runtime, user_id: int, metadata: dict[str, str], make: Callable[[Session, int], T]
) -> T:
    """`make` the upload for the job the metadata names, or for a new job made for it; a
    new job goes again if `make` refuses, so a refused creation leaves nothing."""
    wanted = tus.job_of(metadata)
    with rt.sessions() as session:
        if isinstance(wanted, int):
            return make(session, records.job_for(session, user_id, wanted))
        job = create_job(session, rt.kinds, user_id, wanted.name, wanted.kind, wanted.params)
        try:
            return make(session, job.id)
        except BaseException:
            session.rollback()
            session.delete(job)
            session.commit()
            raise


def _create_upload(
    rt: Runtime, user_id: int, length: int, raw: str | None, metadata: dict[str, str]
) -> records.TusState:
    file_name = tus.file_name_of(metadata)
    return _job_then(
        rt, user_id, metadata,
        lambda s, job_id: records.create_upload(
            s, rt.storage, rt.settings, user_id, job_id, length, raw, file_name
        ),
    )  # fmt: skip


def _create_final(
    rt: Runtime, user_id: int, partials: list[str], raw: str | None, metadata: dict[str, str]
) -> tuple[records.TusState, bool]:
    file_name = tus.file_name_of(metadata)
    return _job_then(
        rt, user_id, metadata,
        lambda s, job_id: records.create_final(
            s, rt.storage, rt.settings, user_id, job_id, partials, raw, file_name
        ),
    )  # fmt: skip


@router.head("/{tus_id}")
def head(tus_id: str, request: Request, user: CurrentUser, rt: RuntimeDep) -> Response:
    """Where the upload stands: its offset counts only bytes stored and recorded."""
    _check_version(request)
    with rt.sessions() as session:
        state = records.state_of(session, rt.settings, user.id, tus_id)
    headers = {**_state_headers(state), "Cache-Control": "no-store"}
    if state.metadata:
        headers["Upload-Metadata"] = state.metadata
    return Response(status_code=200, headers=headers)


@router.patch("/{tus_id}", status_code=204, dependencies=[RefusalsCounted])
async def patch(tus_id: str, request: Request, user: CurrentUser, rt: RuntimeDep) -> Response:
    """Bytes appended at `Upload-Offset`, which must be the upload's."""
    _check_version(request)
    if request.headers.get("content-type") != tus.PATCH_TYPE:
        raise ChuteError(Problem.TUS_CONTENT_TYPE)
    offset = tus.parse_count("Upload-Offset", request.headers.get("upload-offset"))
    checksum = tus.parse_checksum(request.headers.get("upload-checksum"))
    appender = _patch(request, user.id)

    def open_patch() -> records.TusState:
        with rt.sessions() as session:
            return records.open_patch(session, rt.settings, user.id, tus_id, offset)

    body = Body(request.stream())
    try:
        state = await appender.path.in_thread(open_patch)
        if state.complete and _has_body(request):
            raise ChuteError(Problem.PATCH_TOO_LARGE, left=0)
    except ChuteError:
        # A short body is read, so the client sees the answer; a long one is cut off.
        await body.drain(rt.settings.max_body_bytes)
        raise
    if state.complete:
        return Response(status_code=204, headers=_state_headers(state))
    offset = await appender.append(state, _content_length(request), checksum, body)
    return Response(status_code=204, headers=_state_headers(_after(state, offset, rt)))


def _after(state: records.TusState, offset: int, rt: Runtime) -> records.TusState:
    """The upload once a PATCH took it to `offset`: a recorded part touched it just now,
    so its expiry counts from now (none once complete); no second look in the database."""
    if offset == state.offset:
        return state
    complete = offset == state.length
    expires = None if complete else utcnow() + timedelta(seconds=rt.settings.upload_expiry)
    return dataclasses.replace(state, offset=offset, complete=complete, expires_at=expires)


@router.delete("/{tus_id}", status_code=204)
def delete(tus_id: str, request: Request, user: CurrentUser, rt: RuntimeDep) -> Response:
    """Discard an unfinished upload; its job goes back to awaiting its upload."""
    _check_version(request)
    with rt.sessions() as session:
        storage_id = records.discard(session, user.id, tus_id)
    if storage_id is not None:
        rt.storage.abort(storage_id)
    return Response(status_code=204)


class TusResumable:
    """Every answer under /api/tus/, errors included, says the tus version it speaks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"tus-resumable", tus.VERSION.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)
