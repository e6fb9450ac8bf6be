"""What the webhook routes take and give: endpoints (create / public / with its secret,
shown once) and deliveries."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from chute.config import WEBHOOK_URL_MAX, webhook_url_problem
from chute.db.models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookEvent
from chute.webhooks.events import EventType


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=WEBHOOK_URL_MAX)
    # The events it wants; omitted or null: all of them.
    events: list[EventType] | None = Field(None, min_length=1, max_length=6)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if (problem := webhook_url_problem(url)) is not None:
            raise PydanticCustomError("url", "the URL {problem}", {"problem": problem})
        return url

    @field_validator("events")
    @classmethod
    def _once_each(cls, events: list[EventType] | None) -> list[EventType] | None:
        return None if events is None else list(dict.fromkeys(events))


class WebhookPublic(BaseModel):
    id: int
    url: str
    events: list[str] | None
    created_at: datetime
    # Set when the endpoint answered 410 Gone: nothing is sent to it any more.
    disabled_at: datetime | None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookPublic:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=endpoint.events,
            created_at=endpoint.created_at,
            disabled_at=endpoint.disabled_at,
        )


class WebhookWithSecret(WebhookPublic):
    # Shown once, when made or rotated: the receiver verifies signatures with it.
    secret: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookWithSecret:
        return cls(**WebhookPublic.of(endpoint).model_dump(), secret=endpoint.secret)


class WebhookList(BaseModel):
    items: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    id: int
    endpoint_id: int | None
    # The event's `webhook-id`, the same on every attempt.
    webhook_id: str
    event: str
    job_id: int
    state: DeliveryState
    attempts: int
    created_at: datetime
    last_attempt_at: datetime | None
    # The last answer's HTTP status; null when there was none (timeout, no connection).
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, delivery: WebhookDelivery, event: WebhookEvent) -> DeliveryPublic:
        return cls(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            webhook_id=event.msg_id,
            event=event.type,
            job_id=event.job_id,
            state=delivery.state,
            attempts=delivery.attempts,
            created_at=delivery.created_at,
            last_attempt_at=delivery.last_attempt_at,
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            delivered_at=delivery.delivered_at,
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    total: int
    limit: int
    offset: int
