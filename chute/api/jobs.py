from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from chute.api.deps import CurrentUser, RuntimeDep, SessionDep
from chute.api.schemas import JobCreate, JobPage, JobPublic
from chute.db.jobs import MAX_ID, get_owned_job, remove_stored
from chute.jobs import service

router = APIRouter(prefix="/api/job", tags=["jobs"])


@router.post("", status_code=201)
def create_job(
    body: JobCreate, user: CurrentUser, session: SessionDep, rt: RuntimeDep
) -> JobPublic:
    job = service.create_job(session, rt.kinds, user.id, body.name, body.kind, body.params)
    return JobPublic.of(job, None, rt.settings.upload_expiry)


@router.get("")
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobPage:
    rows, total = service.list_jobs(session, user.id, limit, offset)
    expiry = rt.settings.upload_expiry
    items = [JobPublic.of(job, upload, expiry) for job, upload in rows]
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}")
def get_job(job_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> JobPublic:
    job = get_owned_job(session, user.id, job_id)
    return JobPublic.of(job, service.upload_of(session, job_id), rt.settings.upload_expiry)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> JobPublic:
    job, discard = service.cancel_job(session, user.id, job_id)
    remove_stored(rt.storage, discard, [job_id])
    return JobPublic.of(job, service.upload_of(session, job_id), rt.settings.upload_expiry)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> Response:
    remove_stored(rt.storage, service.delete_job(session, user.id, job_id), [job_id])
    return Response(status_code=204)
