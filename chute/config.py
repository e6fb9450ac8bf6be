"""One settings object for the whole service, read from `CHUTE_*` environment variables."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB

DEFAULT_CHUNK_SIZE = 100 * MiB


class Settings(BaseSettings):
    """Defaults serve the embedded deployment: everything under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="CHUTE_", extra="ignore")

    data_dir: Path = Path("chute-data")
    # Empty means "the embedded default inside data_dir"; see the resolved_* properties.
    database_url: str = ""
    storage_url: str = ""
    queue_url: str = ""
    # The queue's name: Huey's key prefix on Redis, so several Chutes can share one Redis.
    queue_name: str = Field("chute", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    # "text" or "json": one JSON object per log line, for a log collector.
    log_format: str = Field("text", pattern=r"^(text|json)$")

    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1)
    max_chunk_bytes: int = Field(256 * MiB, ge=1)
    max_total_chunks: int = Field(100_000, ge=1)
    max_file_bytes: int = Field(1024 * GiB, ge=1)
    parallel_chunks: int = Field(3, ge=1, le=32)
    # Seconds an unfinished upload may sit without a new chunk before it is removed.
    upload_expiry: int = Field(24 * 3600, ge=1)
    # Seconds between two sweeps of expired uploads and lost enqueues.
    sweep_interval: float = Field(60.0, gt=0)
    # A queued job not claimed after this many seconds is enqueued again.
    requeue_after: float = Field(60.0, gt=0)
    # Upload requests one user may have in flight at once in one API process.
    max_uploads_per_user: int = Field(16, ge=1)
    # Chunks are refused with 507 when storing one would leave less free disk than this.
    min_free_bytes: int = Field(1 * GiB, ge=0)
    # Bytes each user may hold (unfinished uploads, stored files and job outputs) unless an
    # admin set their own quota (`users.quota_bytes`); 0: no quota. Past it uploads get 507.
    user_quota_bytes: int = Field(0, ge=0, le=2**63 - 1)
    # Seconds a request waits for another request still sending the same chunk; longer
    # than CHUTE_BODY_IDLE_TIMEOUT, so a re-send outwaits a request cut off unseen, and
    # shorter than the clients' stall timeout (60 s), which would otherwise cut off the
    # waiting re-send (the server reads none of its bytes meanwhile).
    chunk_lock_timeout: float = Field(45.0, gt=0)
    # On storage without part locks of its own (S3): seconds a request sending a chunk
    # holds the chunk's lease in the database without renewing it (it renews it every
    # third of that while it streams); a lease older than that was left by a dead process.
    part_lease_seconds: float = Field(30.0, gt=0)

    # Seconds between two heartbeats (and progress reports) of a running job.
    heartbeat_interval: float = Field(1.0, gt=0)
    # A running job whose last heartbeat is older than this many seconds lost its worker.
    heartbeat_timeout: float = Field(30.0, gt=0)
    # Times a job may be started before a lost worker makes it fail for good.
    max_attempts: int = Field(3, ge=1)
    # DuckDB's memory limit and threads per profile job (0 threads: one per core).
    duckdb_memory_limit: str = "1GB"
    duckdb_threads: int = Field(0, ge=0)

    token_ttl: int = Field(24 * 3600, ge=60)
    session_ttl: int = Field(14 * 24 * 3600, ge=60)

    # Behind a TLS proxy (DESIGN §2). The address browsers use, e.g. https://chute.example.com:
    # when set it is the only origin a cookie-authenticated write may come from, and the
    # session cookie is `Secure` if it is https. Empty: the request's own scheme and Host.
    public_url: str = ""
    # Front ends on other origins that may call the API with bearer tokens (DESIGN §7):
    # comma-separated exact origins, like https://app.example.com. Empty: no CORS at all.
    # Cookies stay same-origin whatever is listed here.
    cors_origins: str = ""
    # Comma-separated IPs or CIDRs of the proxies whose X-Forwarded-For and
    # X-Forwarded-Proto are believed (the client's address for the sign-in limits, https
    # for the cookie). Empty: nothing is trusted, whoever sends those headers.
    forwarded_allow_ips: str = ""
    # Sign-in limits: `signin_max_failures` failures for one user name or one client
    # address within `signin_window` seconds block it for `signin_block` seconds; each
    # further failure before the streak is forgotten doubles the block, up to
    # `signin_max_block`. A success forgets the failures of its name and address.
    signin_max_failures: int = Field(5, ge=1)
    signin_window: int = Field(15 * 60, ge=1)
    signin_block: int = Field(60, ge=1)
    signin_max_block: int = Field(3600, ge=1)

    # Webhooks (DESIGN §7). The deployment's own receiver of every user's events, and
    # its `whsec_` secret; users add receivers of their own with `POST /api/webhooks`.
    webhook_url: str = ""
    webhook_secret: SecretStr = SecretStr("")
    # Seconds to connect to a receiver, and to wait for each read of its answer.
    webhook_connect_timeout: float = Field(5.0, gt=0)
    webhook_timeout: float = Field(10.0, gt=0)
    # Retries: the first after `webhook_retry_base` seconds, each later one twice as long
    # (with jitter), never more than `webhook_retry_max` apart; given up
    # `webhook_give_up_after` seconds after the event.
    webhook_retry_base: float = Field(5.0, gt=0)
    webhook_retry_max: float = Field(3600.0, gt=0)
    webhook_give_up_after: float = Field(24 * 3600.0, gt=0)
    # Users' webhook URLs may name loopback, private and link-local addresses (a backend
    # on the same host or network). Off: only public addresses, so no user can make the
    # worker call what only the server reaches. CHUTE_WEBHOOK_URL may name any address.
    webhook_allow_private: bool = False
    # Deliveries one worker sends at once, on threads of their own (never a job's).
    webhook_threads: int = Field(4, ge=1, le=64)

    # GET /metrics (DESIGN §8) answers anyone, not only admins: for a Prometheus that
    # reaches Chute only over a private network, or through a proxy that guards /metrics.
    metrics_public: bool = False

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Hostile and broken clients (DESIGN §2).
    # Seconds a request's headers may take, from the connection's start or the end of the
    # previous answer on it; then the connection is closed.
    header_timeout: float = Field(30.0, gt=0)
    # Seconds an idle keep-alive connection stays open after an answer.
    keepalive_timeout: int = Field(5, ge=1)
    # Connections waiting for request headers that one API process keeps (at most half its
    # file limit); past it the one waiting longest is closed, so slow ones never starve others.
    max_waiting_connections: int = Field(1000, ge=1)
    # Seconds a request body may send no byte before the request is cut off (408); a body
    # of a route other than upload-data must arrive whole within it.
    body_idle_timeout: float = Field(30.0, gt=0)
    # Bytes a request body may hold on every route but upload-data (413).
    max_body_bytes: int = Field(64 * 1024, ge=1)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.chunk_lock_timeout <= self.body_idle_timeout:
            raise ValueError(
                "CHUTE_CHUNK_LOCK_TIMEOUT must exceed CHUTE_BODY_IDLE_TIMEOUT, or a chunk "
                "re-sent after a silent network drop would be refused rather than taken"
            )
        return self

    # The S3-compatible store, for CHUTE_STORAGE_URL=s3://bucket/prefix. An empty endpoint
    # means AWS's own; empty keys mean boto3's usual sources (environment, files, roles).
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    # S3's least size of every part but the last; some compatible stores allow less.
    s3_min_part_size: int = Field(5 * MiB, ge=1)

    # Identity from the host application's OpenID Connect provider (DESIGN §7). Empty
    # issuer: off, only Chute's own users sign in. Its bearer JWTs must name the audience.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    # The claim a first-seen user's name is taken from; `sub` when the token lacks it.
    oidc_name_claim: str = Field("preferred_username", min_length=1, max_length=100)
    # Seconds the provider's keys (and discovery document) are used before being fetched
    # again; a token with an unknown key id fetches them sooner, but never more often
    # than once per `oidc_jwks_min_interval` seconds, whatever tokens attackers send.
    oidc_jwks_max_age: float = Field(3600.0, gt=0)
    oidc_jwks_min_interval: float = Field(30.0, gt=0)
    # Seconds of clock skew allowed on exp, nbf and iat.
    oidc_leeway: int = Field(30, ge=0, le=300)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        return public_origin(value) if value.strip() else ""

    @field_validator("oidc_issuer")
    @classmethod
    def _check_oidc_issuer(cls, value: str) -> str:
        return oidc_issuer(value) if value.strip() else ""

    @field_validator("oidc_audience")
    @classmethod
    def _check_oidc_audience(cls, value: str) -> str:
        return value.strip()

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str) -> str:
        return ",".join(cors_origins(value))

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str) -> str:
        if not value.strip():
            return ""
        problem = webhook_url_problem(value.strip())
        if problem is not None:
            raise ValueError(f"CHUTE_WEBHOOK_URL {problem}")
        return value.strip()

    @model_validator(mode="after")
    def _check_webhook_secret(self) -> Self:
        secret = self.webhook_secret.get_secret_value()
        if self.webhook_url and not secret:
            raise ValueError("CHUTE_WEBHOOK_URL needs CHUTE_WEBHOOK_SECRET (whsec_ and base64)")
        if secret and (problem := webhook_secret_problem(secret)) is not None:
            raise ValueError(f"CHUTE_WEBHOOK_SECRET {problem}")
        return self

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        return ",".join(trusted_proxies(value))

    @model_validator(mode="after")
    def _check_sizes(self) -> Self:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError(
                "CHUTE_OIDC_AUDIENCE must be set when CHUTE_OIDC_ISSUER is: without it, a "
                "token the provider issued for any other application would be accepted"
            )
        if self.signin_block > self.signin_max_block:
            raise ValueError("CHUTE_SIGNIN_BLOCK must not exceed CHUTE_SIGNIN_MAX_BLOCK")
        if self.chunk_size > self.max_chunk_bytes:
            raise ValueError("CHUTE_CHUNK_SIZE must not exceed CHUTE_MAX_CHUNK_BYTES")
        if self.queue_url and not self.queue_url.startswith(("sqlite://", "redis://")):
            raise ValueError("CHUTE_QUEUE_URL must start with sqlite:// or redis://")
        if self.storage_url and not self.storage_url.startswith(("file://", "s3://", "memory://")):
            raise ValueError(
                "CHUTE_STORAGE_URL must start with file:// or s3:// (memory:// in tests)"
            )
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(
                "CHUTE_HEARTBEAT_TIMEOUT must exceed twice CHUTE_HEARTBEAT_INTERVAL, "
                "or a slow heartbeat would hand a live job to a second worker"
            )
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return cors_origins(self.cors_origins)

    @property
    def trusted_proxies(self) -> list[str]:
        return trusted_proxies(self.forwarded_allow_ips)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'chute.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir.resolve() / 'files'}"

    @property
    def resolved_queue_url(self) -> str:
        return self.queue_url or f"sqlite:///{self.data_dir.resolve() / 'queue.db'}"

    @property
    def embedded_queue(self) -> bool:
        """The queue lives in the data dir (SQLite): `chute serve` runs its worker itself."""
        return not self.resolved_queue_url.startswith("redis://")


def public_origin(url: str, setting: str = "CHUTE_PUBLIC_URL") -> str:
    """`https://Chute.example.com:443/` as a browser's Origin names it: `https://chute.example.com`."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or port == -1
    ):
        raise ValueError(
            f"{setting} must be an http or https address with a host and nothing after "
            "it, like https://chute.example.com"
        )
    host = parts.hostname  # lowercased; IPv6 without its brackets
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def oidc_issuer(url: str) -> str:
    """CHUTE_OIDC_ISSUER as tokens name it in `iss`: https, or http on a loopback host."""
    value = url.strip()
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if (
        not (parts.scheme == "https" or (parts.scheme == "http" and loopback))
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username is not None
        or port == -1
    ):
        raise ValueError(
            "CHUTE_OIDC_ISSUER must be the provider's https address as its tokens name it "
            "(http only on a loopback host), with no query or fragment"
        )
    return value


def cors_origins(value: str) -> list[str]:
    """CHUTE_CORS_ORIGINS as browsers name origins, each once, in the order given."""
    found: dict[str, None] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        found[public_origin(item, f"CHUTE_CORS_ORIGINS: {item!r}")] = None
    return list(found)


WEBHOOK_URL_MAX = 2000


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot receive webhooks, in words that follow its name; None if it can."""
    if len(url) > WEBHOOK_URL_MAX:
        return f"is longer than {WEBHOOK_URL_MAX} characters"
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return "has spaces or control characters"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        return "has a host name that is not valid"
    if parts.username is not None:
        return "must not carry a user name or password"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def webhook_secret_problem(secret: str) -> str | None:
    """Why `secret` is no Standard Webhooks secret (`whsec_` and 24 to 64 bytes in base64)."""
    if not secret.startswith("whsec_"):
        return "must start with whsec_"
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return "must be whsec_ followed by base64"
    if not 24 <= len(key) <= 64:
        return "must hold 24 to 64 bytes (whsec_ and 32 to 88 characters of base64)"
    return None


def trusted_proxies(value: str) -> list[str]:
    """CHUTE_FORWARDED_ALLOW_IPS as networks: `10.0.0.1, 10.1.0.0/16` -> ['10.0.0.1/32', ...]."""
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"CHUTE_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network"
            ) from None
    return networks
