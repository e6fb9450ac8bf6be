"""A user's webhooks: endpoints (add, list, rotate the secret, delete) and deliveries
(list, send again). Another user's endpoint or delivery answers the same 404 as none."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chute.db.jobs import MAX_ID
from chute.db.models import (
    DeliveryState,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from chute.errors import ChuteError, Problem, invalid
from chute.webhooks.address import literal_problem
from chute.webhooks.events import NEW_KEY
from chute.webhooks.signing import new_secret

# Endpoints one user may have.
MAX_ENDPOINTS = 20
# How long the secret a rotation replaced still signs beside the new one.
ROTATION_GRACE = timedelta(hours=24)


def add_endpoint(
    session: Session,
    user_id: int,
    url: str,
    events: Sequence[str] | None,
    *,
    allow_private: bool = False,
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the answer shows it; it is not shown again).
    A host that is a name is checked at each delivery (`chute.webhooks.address`)."""
    if not allow_private and (problem := literal_problem(url)) is not None:
        raise invalid(f"url: the URL {problem}; this server sends webhooks to public ones only.")
    count = session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise ChuteError(Problem.TOO_MANY_WEBHOOKS, limit=MAX_ENDPOINTS)
    endpoint = WebhookEndpoint(
        user_id=user_id,
        url=url,
        events=None if events is None else list(events),
        secret=new_secret(),
    )
    session.add(endpoint)
    session.commit()
    return endpoint


def endpoints(session: Session, user_id: int) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.user_id == user_id)
            .order_by(WebhookEndpoint.id)
        )
    )


def owned_endpoint(
    session: Session, user_id: int, endpoint_id: int, *, lock: bool = False
) -> WebhookEndpoint:
    if not 0 < endpoint_id <= MAX_ID:
        raise ChuteError(Problem.WEBHOOK_NOT_FOUND)
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.user_id == user_id
    )
    endpoint = session.scalar(query.with_for_update() if lock else query)
    if endpoint is None:
        raise ChuteError(Problem.WEBHOOK_NOT_FOUND)
    return endpoint


def delete_endpoint(session: Session, user_id: int, endpoint_id: int) -> None:
    """Delete the endpoint, and with it its deliveries (a task sending one finds none)."""
    session.delete(owned_endpoint(session, user_id, endpoint_id, lock=True))
    session.commit()


def rotate_secret(session: Session, user_id: int, endpoint_id: int) -> WebhookEndpoint:
    """A new secret; the one it replaces still signs for `ROTATION_GRACE`, beside it."""
    endpoint = owned_endpoint(session, user_id, endpoint_id, lock=True)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_until = utcnow() + ROTATION_GRACE
    endpoint.secret = new_secret()
    session.commit()
    return endpoint


DeliveryRow = tuple[WebhookDelivery, WebhookEvent]


def deliveries(
    session: Session, user_id: int, limit: int, offset: int, endpoint_id: int | None = None
) -> tuple[list[DeliveryRow], int]:
    """The user's deliveries, newest first: those to their endpoints (the deployment's
    own endpoint is the operator's, not listed here)."""
    where = [WebhookEndpoint.user_id == user_id]
    if endpoint_id is not None:
        where.append(WebhookEndpoint.id == endpoint_id)
    joined = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(*where)
    )
    total = session.scalar(select(func.count()).select_from(joined.subquery()))
    rows = session.execute(
        joined.order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset)
    ).all()
    return [(delivery, event) for delivery, event in rows], int(total or 0)


def retry(
    session: Session, user_id: int, delivery_id: int, lease: timedelta, give_up_after: float
) -> DeliveryRow:
    """Send a delivery again now, whatever its state, with the event's `webhook-id`; its
    retries start over (given up `give_up_after` seconds from now). The commit enqueues it."""
    if not 0 < delivery_id <= MAX_ID:
        raise ChuteError(Problem.DELIVERY_NOT_FOUND)
    row = session.execute(
        select(WebhookDelivery, WebhookEvent, WebhookEndpoint)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id, WebhookEndpoint.user_id == user_id)
        .with_for_update(of=WebhookDelivery)
    ).one_or_none()
    if row is None:
        raise ChuteError(Problem.DELIVERY_NOT_FOUND)
    delivery, event, endpoint = row
    now = utcnow()
    if delivery.claim is not None and delivery.claimed_at and delivery.claimed_at > now - lease:
        raise ChuteError(Problem.DELIVERY_IN_FLIGHT)
    if endpoint.disabled_at is not None:
        # Asked by the user: the endpoint is wanted again.
        endpoint.disabled_at = None
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = now
    delivery.give_up_at = now + timedelta(seconds=give_up_after)
    delivery.claim = delivery.claimed_at = None
    session.info.setdefault(NEW_KEY, []).append(delivery.id)
    session.commit()
    return delivery, event
