"""Events: a row per event, and a delivery row per receiver, written in the caller's
transaction, the one that changes the job's status. So an event exists exactly when its
change was committed, and a delivery task started after the commit finds its row.

Which receivers get an event is decided here, when it happens: the job owner's enabled
endpoints whose filter names it, and the deployment's CHUTE_WEBHOOK_URL if set. The
session says what the deployment has (`EventConfig` in `Session.info`, put there by the
runtime's session factory), so `chute.db.jobs.transition` needs no settings.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from chute.db.models import (
    DeliveryState,
    Job,
    JobStatus,
    Upload,
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)

EventType = Literal[
    "upload.completed",
    "job.running",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "upload.expired",
]
# The event of each status a job moves to; a job becomes `queued` when its upload completes.
EVENT_OF_STATUS: Final[dict[JobStatus, EventType]] = {
    JobStatus.QUEUED: "upload.completed",
    JobStatus.RUNNING: "job.running",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
    JobStatus.UPLOAD_EXPIRED: "upload.expired",
}

CONFIG_KEY: Final = "chute.webhooks.config"
# Delivery ids written in the session's open transaction: enqueued once it commits.
NEW_KEY: Final = "chute.webhooks.new"


@dataclass(frozen=True)
class EventConfig:
    """What the deployment's settings say about events, as the session carries them."""

    # CHUTE_WEBHOOK_URL is set: every event goes there too.
    deployment: bool = False
    give_up_after: float = 24 * 3600.0


def job_changed(session: Session, job_id: int, to: JobStatus) -> None:
    """Record the event of the job's move to `to`, if it has one and anyone listens.

    Call it in the transaction that moved the job, after the move, before the commit.
    """
    event_type = EVENT_OF_STATUS.get(to)
    if event_type is None:
        return
    config: EventConfig = session.info.get(CONFIG_KEY) or EventConfig()
    job = session.execute(
        select(
            Job.id,
            Job.user_id,
            Job.name,
            Job.kind,
            Job.created_at,
            Job.finished_at,
            Job.error,
            User.username,
        )
        .join(User, User.id == Job.user_id)
        .where(Job.id == job_id)
    ).one_or_none()
    if job is None:
        return
    endpoints = [
        endpoint_id
        for endpoint_id, wanted in session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.events).where(
                WebhookEndpoint.user_id == job.user_id, WebhookEndpoint.disabled_at.is_(None)
            )
        )
        if wanted is None or event_type in wanted
    ]
    receivers: list[int | None] = [*endpoints, *([None] if config.deployment else [])]
    if not receivers:
        return
    now = utcnow()
    data: dict[str, Any] = {
        "job": {
            "id": job.id,
            "name": job.name,
            "kind": job.kind,
            "status": to.value,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error if to is JobStatus.FAILED else None,
        },
        "user": {"id": job.user_id, "username": job.username},
    }
    if event_type.startswith("upload."):
        data["upload"] = _upload(session, job_id)
    event = WebhookEvent(
        msg_id=f"msg_{secrets.token_hex(16)}",
        type=event_type,
        user_id=job.user_id,
        job_id=job.id,
        payload={"type": event_type, "timestamp": now.isoformat(), "data": data},
        created_at=now,
    )
    session.add(event)
    session.flush()
    deliveries = [
        WebhookDelivery(
            event_id=event.id,
            endpoint_id=endpoint_id,
            state=DeliveryState.PENDING,
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=config.give_up_after),
            created_at=now,
        )
        for endpoint_id in receivers
    ]
    session.add_all(deliveries)
    session.flush()
    session.info.setdefault(NEW_KEY, []).extend(d.id for d in deliveries)


def _upload(session: Session, job_id: int) -> dict[str, Any] | None:
    upload = session.execute(
        select(Upload.file_name, Upload.protocol, Upload.bytes_received).where(
            Upload.job_id == job_id
        )
    ).one_or_none()
    if upload is None:
        return None
    return {
        "file_name": upload.file_name,
        "protocol": upload.protocol,
        "bytes": upload.bytes_received,
    }


def purge_events(session: Session, before: datetime) -> int:
    """Delete events older than `before` that nothing is still trying to deliver (their
    deliveries go with them); returns how many. Commits."""
    pending = select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.id,
        WebhookDelivery.state == DeliveryState.PENDING,
    )
    result = session.execute(
        delete(WebhookEvent).where(WebhookEvent.created_at < before, ~pending.exists())
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
