"""Webhook routes: a user's endpoints and their deliveries (`chute.webhooks.service`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from chute.api.deps import CurrentUser, RuntimeDep, SessionDep
from chute.api.webhook_schemas import (
    DeliveryPage,
    DeliveryPublic,
    WebhookCreate,
    WebhookList,
    WebhookPublic,
    WebhookWithSecret,
)
from chute.db.jobs import MAX_ID
from chute.webhooks import service

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
def add_webhook(
    body: WebhookCreate, user: CurrentUser, session: SessionDep, rt: RuntimeDep
) -> WebhookWithSecret:
    allow_private = rt.settings.webhook_allow_private
    endpoint = service.add_endpoint(
        session, user.id, body.url, body.events, allow_private=allow_private
    )
    return WebhookWithSecret.of(endpoint)


@router.get("")
def list_webhooks(user: CurrentUser, session: SessionDep) -> WebhookList:
    return WebhookList(items=[WebhookPublic.of(e) for e in service.endpoints(session, user.id)])


@router.get("/deliveries")
def list_deliveries(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    endpoint_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> DeliveryPage:
    rows, total = service.deliveries(session, user.id, limit, offset, endpoint_id)
    items = [DeliveryPublic.of(delivery, event) for delivery, event in rows]
    return DeliveryPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/deliveries/{delivery_id}/retry")
def retry_delivery(
    delivery_id: int, user: CurrentUser, session: SessionDep, rt: RuntimeDep
) -> DeliveryPublic:
    lease, give_up = rt.webhook_policy.lease, rt.settings.webhook_give_up_after
    delivery, event = service.retry(session, user.id, delivery_id, lease, give_up)
    return DeliveryPublic.of(delivery, event)


@router.post("/{endpoint_id}/rotate")
def rotate_secret(endpoint_id: int, user: CurrentUser, session: SessionDep) -> WebhookWithSecret:
    return WebhookWithSecret.of(service.rotate_secret(session, user.id, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204)
def delete_webhook(endpoint_id: int, user: CurrentUser, session: SessionDep) -> Response:
    service.delete_endpoint(session, user.id, endpoint_id)
    return Response(status_code=204)
