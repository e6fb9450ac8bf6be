"""`GET /api/job/{job_id}/events`: a job's status and progress as Server-Sent Events.

Each change is one `event: job` whose data is the job, as `GET /api/job/{job_id}` gives
it; the first is sent at once. The stream ends after a final status (so a client closes
its EventSource then, or it reconnects and gets the final event again), and with
`event: gone` if the job is deleted. It reads the database, so it works whichever API
process or worker the job's changes come from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from chute.api.deps import CurrentUser, RuntimeDep
from chute.api.schemas import JobPublic
from chute.db.jobs import get_owned_job
from chute.db.models import ENDED
from chute.errors import ChuteError
from chute.jobs import service
from chute.runtime import Runtime

router = APIRouter(prefix="/api/job/{job_id}/events", tags=["jobs"])

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


@router.get("")
async def job_events(job_id: int, user: CurrentUser, rt: RuntimeDep) -> StreamingResponse:
    first = await run_in_threadpool(_snapshot, rt, user.id, job_id)  # 404 before the stream
    return StreamingResponse(
        _events(rt, user.id, job_id, first),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _snapshot(rt: Runtime, user_id: int, job_id: int) -> JobPublic:
    with rt.sessions() as session:
        job = get_owned_job(session, user_id, job_id)
        return JobPublic.of(job, service.upload_of(session, job_id), rt.settings.upload_expiry)


async def _events(rt: Runtime, user_id: int, job_id: int, job: JobPublic) -> AsyncIterator[str]:
    yield f"retry: {int(POLL_SECONDS * 4000)}\n\n"
    sent = ""
    quiet = 0.0
    while True:
        data = job.model_dump_json()
        if data != sent:
            yield f"event: job\ndata: {data}\n\n"
            sent, quiet = data, 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"  # a comment: keeps proxies from closing an idle stream
            quiet = 0.0
        if job.status in ENDED:
            return
        await asyncio.sleep(POLL_SECONDS)
        quiet += POLL_SECONDS
        try:
            job = await run_in_threadpool(_snapshot, rt, user_id, job_id)
        except ChuteError as exc:
            yield f"event: gone\ndata: {json.dumps({'detail': exc.detail})}\n\n"
            return
