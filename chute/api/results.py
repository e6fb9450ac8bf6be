"""What a job made: its result (JSON) and its files, such as the profile's Parquet."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from chute.api.deps import CurrentUser, RuntimeDep, SessionDep
from chute.jobs import service
from chute.storage import Storage

router = APIRouter(prefix="/api/job/{job_id}/result", tags=["results"])

READ_BLOCK = 1024 * 1024
MEDIA_TYPES = {".parquet": "application/vnd.apache.parquet"}


@router.get("")
def job_result(job_id: int, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    return service.result_of(session, user.id, job_id)


@router.get("/{name}")
def job_output(
    job_id: int, name: str, user: CurrentUser, session: SessionDep, rt: RuntimeDep
) -> StreamingResponse:
    key, size = service.output_of(session, user.id, job_id, name)
    suffix = name[name.rfind(".") :] if "." in name else ""
    media_type = MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0]
    return StreamingResponse(
        _read(rt.storage, key),
        media_type=media_type or "application/octet-stream",
        headers={
            "content-length": str(size),
            "content-disposition": f'attachment; filename="job-{job_id}-{name}"',
        },
    )


def _read(storage: Storage, key: str) -> Iterator[bytes]:
    # A plain iterator: Starlette pulls it from a worker thread, so reads never block the loop.
    with storage.open(key) as f:
        while block := f.read(READ_BLOCK):
            yield block
