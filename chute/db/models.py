"""The metadata schema. Alembic migrations under `migrations/` create it; nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Job ids are 64-bit on every database, as `chute.db.jobs.MAX_ID` says. SQLite's
# INTEGER already is, and only an INTEGER primary key numbers its rows by itself.
JobId = BigInteger().with_variant(Integer(), "sqlite")
# The same for the webhook tables, whose ids the API takes up to that bound too.
RowId = JobId


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    UPLOADING = "uploading"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UPLOAD_EXPIRED = "upload_expired"


ENDED = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.UPLOAD_EXPIRED}
)


class TokenKind(StrEnum):
    BEARER = "bearer"
    SESSION = "session"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    """A local user (signs in with a password), or a user of the host application's OpenID
    Connect provider, known by (issuer, subject) and without a password (`chute.auth.oidc`)."""

    __tablename__ = "users"
    # An index, not a table constraint: migration 0007 says why.
    __table_args__ = (Index("uq_users_oidc", "oidc_issuer", "oidc_subject", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    # Empty (NO_PASSWORD in chute.auth.service): no password signs this user in.
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    oidc_issuer: Mapped[str | None] = mapped_column(String(500))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    # Admins manage users and read /metrics (DESIGN §8).
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Set: no password, session, bearer or API token of this user is accepted.
    disabled_at: Mapped[datetime | None]
    # An admin's override of CHUTE_USER_QUOTA_BYTES for this user; None: the default.
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)


class AuthToken(Base):
    """A bearer token or a browser session; only the SHA-256 of the secret is kept."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[TokenKind] = mapped_column(
        Enum(
            TokenKind, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]
        )
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class ApiToken(Base):
    """A named token a user makes for scripts and pipelines (`chute token create`): shown
    once, kept as its SHA-256, optionally expiring, revocable, with its last use."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(JobId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]
        ),
        index=True,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    # The claim of the worker running the job: a fresh token per start, so a worker that
    # lost the job (to the sweeper, a cancel or a delete) can change nothing of it.
    claim: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(index=True)
    # Percent done of a running job, as its kind reports it.
    progress: Mapped[float | None] = mapped_column(Float)
    # Storage key of the assembled input file, set when the upload completes.
    input_key: Mapped[str | None] = mapped_column(String(300))
    result: Mapped[dict[str, Any] | None]
    # Files the job made, by name: {"data.parquet": {"key": ..., "size": ...}}.
    outputs: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)


class Upload(Base):
    """The upload in progress (or complete) of one job's input file."""

    __tablename__ = "uploads"

    job_id: Mapped[int] = mapped_column(
        JobId, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    # The storage backend's id of this upload; a discarded and restarted upload gets a new one.
    storage_id: Mapped[str] = mapped_column(String(200), unique=True)
    file_name: Mapped[str | None] = mapped_column(String(500))
    # Which front door carries the upload: "chunks" (upload-data) or "tus".
    protocol: Mapped[str] = mapped_column(String(8), default="chunks", server_default="chunks")
    # The tus upload's id in its URL, and the Upload-Metadata it was created with.
    tus_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    tus_metadata: Mapped[str | None] = mapped_column(Text)
    # The chunk protocol's number of chunks; None for tus, which completes at file_size.
    total_chunks: Mapped[int | None]
    # A tus final upload's partial uploads, in order, for the worker to join: each
    # {"storage_id", "key", "parts": [[index, offset, size], ...]} (`chute.upload.tus`).
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    chunk_size: Mapped[int | None] = mapped_column(BigInteger)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    chunks_received: Mapped[int] = mapped_column(default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Last time a chunk was recorded: expiry counts from here.
    touched_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None]


class Chunk(Base):
    """A chunk is a row here only once all its bytes are durably stored and verified."""

    __tablename__ = "chunks"

    job_id: Mapped[int] = mapped_column(
        JobId, ForeignKey("uploads.job_id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # False while the chunk waits beside the data file for the upload's chunk size.
    placed: Mapped[bool] = mapped_column(default=True)
    # Where the part starts in the file: set for tus parts; a chunk's is index * chunk_size.
    offset: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TusPartial(Base):
    """A tus partial upload (concatenation): bytes of no job yet, until a final upload
    names it. Its row goes when a final upload takes it, or when it expires."""

    __tablename__ = "tus_partials"

    tus_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    storage_id: Mapped[str] = mapped_column(String(200), unique=True)
    length: Mapped[int] = mapped_column(BigInteger)
    part_size: Mapped[int] = mapped_column(BigInteger)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    parts_received: Mapped[int] = mapped_column(default=0)
    tus_metadata: Mapped[str | None] = mapped_column(Text)
    # Its first bytes (at most 64 KiB): if it comes first in a final upload, they are the
    # file's, checked as CSV when that final upload is created.
    head: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    touched_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None]


class TusPartialPart(Base):
    """A part of a partial upload, recorded once durably stored (as `Chunk` for jobs)."""

    __tablename__ = "tus_partial_parts"

    tus_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("tus_partials.tus_id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class PartLease(Base):
    """A request writing one part of an upload, for storage without part locks of its own
    (an object store reached by several API processes on several machines).

    The row exists while the request streams the part; it renews `renewed_at` as it
    goes, so a lease whose holder died can be taken over once it is old enough.
    """

    __tablename__ = "part_leases"

    storage_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(32))
    renewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SigninFailures(Base):
    """Recent failed sign-ins of one user name or one client address (`chute.auth.throttle`).

    Kept in the database so the limits hold across API processes and hosts.
    """

    __tablename__ = "signin_failures"

    # SHA-256 of "name:<user name>" or "address:<client address>": a fixed size whatever
    # was typed, and no name or address kept in clear.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    # When the failures being counted began; they are forgotten `signin_window` after it.
    window_start: Mapped[datetime] = mapped_column(default=utcnow)
    # Sign-ins are refused until then; each block is twice the last one.
    blocked_until: Mapped[datetime | None]
    block_seconds: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt, or being attempted
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up: 24 h of failures, the endpoint answered 410 or is gone


class WebhookEndpoint(Base):
    """A user's webhook receiver (`POST /api/webhooks`). The deployment's own, from
    CHUTE_WEBHOOK_URL, has no row: its deliveries name no endpoint."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    # The event types it wants; None: all of them.
    events: Mapped[list[str] | None] = mapped_column(JSON)
    # `whsec_...`, kept as given: signing needs the secret itself, not a hash of it.
    secret: Mapped[str] = mapped_column(String(100))
    # After a rotation the old secret signs too, until `previous_until`, so a receiver
    # may switch to the new one at its own pace.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the receiver answered 410 Gone: no more deliveries are made to it.
    disabled_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """Something a user's job did, written in the transaction that did it. `msg_id` is
    the `webhook-id` of every delivery of it, retries included."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # No foreign key: the event outlives a job deleted after it.
    job_id: Mapped[int] = mapped_column(JobId)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event to one endpoint, until it is delivered or given up."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    event_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    # None: the deployment's endpoint (CHUTE_WEBHOOK_URL).
    endpoint_id: Mapped[int | None] = mapped_column(
        RowId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[DeliveryState] = mapped_column(
        Enum(
            DeliveryState,
            native_enum=False,
            length=20,
            values_callable=lambda e: [m.value for m in e],
        ),
        index=True,
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    # Retries stop after this: 24 h after the event, or after a retry asked for by hand.
    give_up_at: Mapped[datetime]
    # The attempt in flight: a task claims the delivery before it sends, so two tasks
    # (a retry and the sweeper's re-enqueue) never send it at once.
    claim: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    # The last answer's status, or None when there was none (timeout, refused).
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(200))
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
