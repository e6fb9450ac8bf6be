"""Everything a process of Chute holds: settings, database, storage and queue, built once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from chute.auth.jwks import ProviderKeys
from chute.auth.oidc import OidcVerifier
from chute.config import Settings
from chute.db.session import make_engine, make_sessionmaker
from chute.jobs.kinds import Kind, load_kinds
from chute.jobs.queue import JobQueue, make_huey
from chute.storage import PartLocking, Storage, make_storage
from chute.upload.partlease import PartLeases
from chute.upload.quota import QuotaLedger
from chute.webhooks.delivery import Policy, deliver
from chute.webhooks.events import EventConfig
from chute.webhooks.queue import WebhookQueue, enqueue_on_commit, queue_name


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    # Job kinds by name, from the `chute.jobs` entry points.
    kinds: dict[str, Kind]
    # Bearer JWTs of the host application's identity provider, when CHUTE_OIDC_ISSUER is set.
    oidc: OidcVerifier | None = None
    queue: JobQueue = field(init=False)
    # Webhook deliveries: their own queue, and the client that sends them.
    webhooks: WebhookQueue = field(init=False)
    webhook_policy: Policy = field(init=False)
    webhook_http: httpx.Client = field(init=False)
    # One writer per part, for storage without part locks of its own.
    part_leases: PartLeases = field(init=False)
    # Who keeps two writers of one part apart: the storage itself where it can (local
    # disk), else the database's leases. Chosen here, once, never per request.
    part_locks: PartLocking = field(init=False)
    # This process's upload requests still streaming, for the users' quotas.
    quota_ledger: QuotaLedger = field(default_factory=QuotaLedger)

    def close(self) -> None:
        if self.oidc is not None:
            self.oidc.close()
        self.webhook_http.close()
        self.engine.dispose()


# What a worker does with a job id from the queue (`chute.jobs.runner.run_job`). The
# entry points bind it: the runner needs the runtime, so the runtime must not import it.
JobHandler = Callable[[Runtime, int], None]


def make_verifier(settings: Settings) -> OidcVerifier | None:
    if not settings.oidc_issuer:
        return None
    keys = ProviderKeys(
        settings.oidc_issuer,
        max_age=settings.oidc_jwks_max_age,
        min_interval=settings.oidc_jwks_min_interval,
    )
    return OidcVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        name_claim=settings.oidc_name_claim,
        leeway=settings.oidc_leeway,
        keys=keys,
    )


def build_runtime(settings: Settings, *, handler: JobHandler) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        storage=make_storage(settings),
        kinds=load_kinds(),
        oidc=make_verifier(settings),
    )
    runtime.part_leases = PartLeases(runtime.sessions, settings.part_lease_seconds)
    storage = runtime.storage
    runtime.part_locks = storage if isinstance(storage, PartLocking) else runtime.part_leases
    runtime.queue = JobQueue(
        make_huey(settings.resolved_queue_url, settings.queue_name),
        lambda job_id: handler(runtime, job_id),
    )
    _wire_webhooks(runtime)
    return runtime


def _wire_webhooks(runtime: Runtime) -> None:
    settings = runtime.settings
    runtime.webhook_policy = Policy.of(settings)
    # No redirects followed (a receiver cannot send Chute elsewhere); no proxy from the
    # environment. Timeouts are set per request, by the policy.
    runtime.webhook_http = httpx.Client(follow_redirects=False, trust_env=False)
    runtime.webhooks = WebhookQueue(
        make_huey(settings.resolved_queue_url, queue_name(settings.queue_name)),
        lambda delivery_id: deliver(
            runtime.sessions,
            runtime.webhook_policy,
            runtime.webhook_http,
            delivery_id,
            runtime.webhooks.enqueue_in,
        ),
    )
    config = EventConfig(
        deployment=bool(settings.webhook_url), give_up_after=settings.webhook_give_up_after
    )
    enqueue_on_commit(runtime.sessions, runtime.webhooks, config)
