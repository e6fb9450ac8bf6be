from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from chute.api.deps import CurrentUser, RuntimeDep, SessionDep
from chute.api.metrics import RefusalsCounted
from chute.api.schemas import ChunkAnswer
from chute.upload import core
from chute.upload.receive import ChunkReceiver
from chute.upload.stream import Body

router = APIRouter(prefix="/api/job/{job_id}/upload-data", tags=["upload"])


@router.post("", dependencies=[RefusalsCounted])
async def upload_chunk(job_id: int, request: Request, user: CurrentUser) -> ChunkAnswer:
    """One chunk, as multipart/form-data; the body is streamed, never read whole."""
    length = request.headers.get("content-length")
    receiver = ChunkReceiver(
        request.app.state.runtime,
        request.app.state.executor,
        request.app.state.upload_slots,
        user.id,
        job_id,
    )
    answer = await receiver.receive(
        request.headers.get("content-type"),
        int(length) if length and length.isdigit() else None,
        Body(request.stream()),
    )
    return ChunkAnswer(**answer)


@router.get("")
def upload_status(job_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> Any:
    return core.upload_status(session, user.id, job_id, rt.settings.upload_expiry)


@router.delete("", status_code=204)
def discard_upload(job_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> Response:
    storage_id = core.discard_upload(session, user.id, job_id)
    if storage_id is not None:
        rt.storage.abort(storage_id)
    return Response(status_code=204)
