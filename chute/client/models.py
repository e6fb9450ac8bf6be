"""What the API gives, as typed values. Each keeps the JSON it came from in `raw`,
so fields the server adds later are still at hand without a client release."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Statuses after which a job changes no more.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "upload_expired"})
# Statuses in which a job takes chunks.
ACCEPTING_STATUSES = frozenset({"awaiting_upload", "uploading"})


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    kind: str
    status: str
    created_at: str
    upload: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    # 0-100 while a job runs, when its kind reports progress.
    progress: float | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Job:
        progress = data.get("progress")
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            kind=str(data.get("kind", "")),
            status=str(data["status"]),
            created_at=str(data.get("created_at", "")),
            upload=data.get("upload"),
            result=data.get("result"),
            error=data.get("error"),
            progress=float(progress) if isinstance(progress, int | float) else None,
            raw=data,
        )

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class HeldChunk:
    index: int
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadStatus:
    """What the server holds of a job's upload (`GET /api/job/{id}/upload-data`)."""

    job_id: int
    state: str  # empty, partial or complete
    total_chunks: int | None
    chunk_size: int | None
    file_size: int | None
    chunks: dict[int, HeldChunk]
    expires_at: str | None

    @classmethod
    def of(cls, data: dict[str, Any]) -> UploadStatus:
        chunks = {
            int(c["index"]): HeldChunk(int(c["index"]), int(c["size"]), str(c["sha256"]))
            for c in data.get("chunks", [])
        }
        return cls(
            job_id=int(data["job_id"]),
            state=str(data["state"]),
            total_chunks=data.get("total_chunks"),
            chunk_size=data.get("chunk_size"),
            file_size=data.get("file_size"),
            chunks=chunks,
            expires_at=data.get("expires_at"),
        )


@dataclass(frozen=True)
class ServerConfig:
    """`GET /api/config`: what the server asks of clients and the limits it holds them to."""

    chunk_size: int
    max_chunk_bytes: int
    max_total_chunks: int
    max_file_bytes: int
    parallel_chunks: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> ServerConfig:
        return cls(
            chunk_size=int(data["chunk_size"]),
            max_chunk_bytes=int(data["max_chunk_bytes"]),
            max_total_chunks=int(data["max_total_chunks"]),
            max_file_bytes=int(data["max_file_bytes"]),
            parallel_chunks=int(data["parallel_chunks"]),
        )


@dataclass(frozen=True)
class ApiToken:
    """One of the user's API tokens (`GET /api/tokens`); `secret` only in the answer that
    made it (`Client.create_api_token`), never again."""

    id: int
    name: str
    created_at: str
    expires_at: str | None
    expired: bool
    # Written by the server at most once a minute.
    last_used_at: str | None
    secret: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> ApiToken:
        secret = data.get("secret")
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            created_at=str(data.get("created_at", "")),
            expires_at=data.get("expires_at"),
            expired=bool(data.get("expired", False)),
            last_used_at=data.get("last_used_at"),
            secret=str(secret) if secret is not None else None,
            raw=data,
        )
