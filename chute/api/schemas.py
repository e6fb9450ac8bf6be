"""What the API takes and gives, one schema family per resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from chute.db.jobs import expires_at
from chute.db.models import Job, JobStatus, Upload
from chute.names import NAME_MAX, NAME_PATTERN, name_problem
from chute.upload.core import started


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=NAME_MAX, json_schema_extra={"pattern": NAME_PATTERN}
    )
    kind: str = Field("profile", min_length=1, max_length=100)
    # Checked against the kind's own params model, if it has one (see chute.jobs.kinds).
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if (problem := name_problem(name)) is not None:
            raise PydanticCustomError("name", problem)
        return name


class UploadProgress(BaseModel):
    state: Literal["partial", "complete"]
    file_name: str | None
    # "chunks" (upload-data) or "tus": the front door that carries the upload.
    protocol: str
    # The chunk protocol's number of chunks; null for tus, whose file_size is known.
    total_chunks: int | None
    chunks_received: int
    chunk_size: int | None
    file_size: int | None
    bytes_received: int
    expires_at: datetime | None


class JobPublic(BaseModel):
    id: int
    name: str
    kind: str
    params: dict[str, Any]
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    # Percent done while running (as the job's kind reports it); 100 once succeeded.
    progress: float | None
    upload: UploadProgress | None
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, job: Job, upload: Upload | None, expiry_seconds: int) -> JobPublic:
        progress = None
        if upload is not None and started(upload):
            progress = UploadProgress(
                state="complete" if upload.completed_at else "partial",
                file_name=upload.file_name,
                protocol=upload.protocol,
                total_chunks=upload.total_chunks,
                chunks_received=upload.chunks_received,
                chunk_size=upload.chunk_size,
                file_size=upload.file_size,
                bytes_received=upload.bytes_received,
                expires_at=expires_at(upload, expiry_seconds),
            )
        return cls(
            id=job.id,
            name=job.name,
            kind=job.kind,
            params=job.params,
            status=job.status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            progress=job.progress,
            upload=progress,
            result=job.result,
            error=job.error,
        )


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class TokenAnswer(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Me(BaseModel):
    id: int
    username: str
    is_admin: bool = False
    # Storage quota (DESIGN §8): what applies (None: none), the bytes held, and what
    # unfinished uploads of a known size still have to send; both count against it.
    quota_bytes: int | None = None
    used_bytes: int = 0
    reserved_bytes: int = 0


class ChunkAnswer(BaseModel):
    message: str
    data_chunk_index: int
    job_id: int
    # Whether the upload is complete (its job started): what clients read, never `message`.
    complete: bool
    duplicate: bool
    # While the upload is unfinished: when it expires if no further chunk arrives.
    expires_at: datetime | None = None


class ServerConfig(BaseModel):
    chunk_size: int
    max_chunk_bytes: int
    max_total_chunks: int
    max_file_bytes: int
    parallel_chunks: int
