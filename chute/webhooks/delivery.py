"""Delivering one webhook: claim it, send it, record the answer, plan the next attempt.

At least once: a delivery row is written with its event (`chute.webhooks.events`) and
stays `pending` until a receiver answers 2xx, answers 410, or 24 h of retries pass. A
task of the queue makes each attempt; a task that was lost (a worker killed mid-send, an
enqueue that failed) is made again by the sweeper (`lost_deliveries`). Two tasks of one
delivery never send at once: an attempt first claims the row (a token and a time), and a
claim older than `Policy.lease` belongs to a dead worker.

Never a job's business: deliveries run on the webhook queue's own threads, each request
with connect and read timeouts, and `deliver` never raises.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from chute.config import Settings
from chute.db.models import (
    DeliveryState,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from chute.db.session import in_transaction
from chute.webhooks.address import PrivateAddress, Target, pinned
from chute.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

# A task may run this early (clocks of several hosts differ by a little).
EARLY_SLACK = timedelta(seconds=2)
USER_AGENT = "Chute-Webhooks/1"
NOT_PUBLIC = (
    "The endpoint's host has an address that is not public; this server sends users' "
    "webhooks to public addresses only (CHUTE_WEBHOOK_ALLOW_PRIVATE)."
)
# Schedules a new attempt of a delivery in some seconds (`WebhookQueue.enqueue_in`).
Schedule = Callable[[int, float], None]


@dataclass(frozen=True)
class Policy:
    """Where the deployment's own webhooks go, and the timing rules of every delivery."""

    url: str
    secret: str
    connect_timeout: float
    read_timeout: float
    retry_base: float
    retry_max: float
    allow_private: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            url=settings.webhook_url,
            secret=settings.webhook_secret.get_secret_value(),
            connect_timeout=settings.webhook_connect_timeout,
            read_timeout=settings.webhook_timeout,
            retry_base=settings.webhook_retry_base,
            retry_max=settings.webhook_retry_max,
            allow_private=settings.webhook_allow_private,
        )

    @property
    def lease(self) -> timedelta:
        """How long an attempt may hold its claim: its connect, its send and its answer
        each within their timeouts, with room to spare."""
        return timedelta(seconds=self.connect_timeout + 3 * self.read_timeout + 5)

    def backoff(self, attempts: int) -> float:
        """Seconds before the attempt after `attempts` failed ones: base, twice that, ...
        up to `retry_max`, each spread by up to a fifth either way so that the retries
        of many deliveries failed at once do not all come back together."""
        delay = self.retry_base * 2 ** min(attempts - 1, 40)
        return float(min(self.retry_max, delay * random.uniform(0.8, 1.2)))


@dataclass(frozen=True)
class Attempt:
    """What one attempt sends, and the claim it holds on its delivery."""

    delivery_id: int
    claim: str
    endpoint_id: int | None
    url: str
    msg_id: str
    body: str
    keys: list[str]


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None
    # Trying again would not help: the delivery is given up at once.
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def deliver(
    sessions: sessionmaker[Session],
    policy: Policy,
    http: httpx.Client,
    delivery_id: int,
    schedule: Schedule,
) -> None:
    """The queue's task: one attempt of a delivery, if it is due and nobody else's."""
    try:
        attempt = in_transaction(sessions, _claim, delivery_id, policy, utcnow())
        if attempt is None:
            return
        outcome = send(http, attempt, policy)
        retry_in = in_transaction(sessions, _record, attempt, outcome, policy, utcnow())
        if retry_in is not None:
            schedule(delivery_id, retry_in)
    except Exception:
        # The sweeper sends it again later: the row is still pending.
        log.exception("webhook delivery %s: the attempt failed unexpectedly", delivery_id)


def _claim(session: Session, delivery_id: int, policy: Policy, now: datetime) -> Attempt | None:
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if (
        delivery is None
        or delivery.state is not DeliveryState.PENDING
        or (delivery.next_attempt_at is not None and delivery.next_attempt_at > now + EARLY_SLACK)
        or (
            delivery.claimed_at is not None
            and delivery.claim is not None
            and delivery.claimed_at > now - policy.lease
        )
    ):
        session.commit()
        return None  # done, given up, not due yet, or being sent by another task
    event = session.get(WebhookEvent, delivery.event_id)
    assert event is not None  # the foreign key deletes the delivery with its event
    if delivery.endpoint_id is None:
        url, keys = policy.url, [policy.secret]
        gone = None if url else "CHUTE_WEBHOOK_URL is no longer set."
    else:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        assert endpoint is not None  # deleted with its endpoint, likewise
        url, keys = endpoint.url, _keys(endpoint, now)
        gone = "The endpoint is disabled." if endpoint.disabled_at is not None else None
    if gone is not None:
        delivery.state, delivery.next_attempt_at, delivery.last_error = (
            DeliveryState.FAILED,
            None,
            gone,
        )
        session.commit()
        return None
    delivery.claim, delivery.claimed_at = secrets.token_hex(16), now
    session.commit()
    body = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False)
    return Attempt(delivery.id, delivery.claim, delivery.endpoint_id, url, event.msg_id, body, keys)


def _keys(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The endpoint's secret, and during a rotation's grace period its previous one."""
    keys = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_until and endpoint.previous_until > now:
        keys.append(endpoint.previous_secret)
    return keys


def send(http: httpx.Client, attempt: Attempt, policy: Policy) -> Outcome:
    """POST the event; only the answer's status is read, never its body."""
    headers = {
        **signed_headers(attempt.msg_id, attempt.body, attempt.keys, utcnow()),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    target = Target(attempt.url)
    if attempt.endpoint_id is not None and not policy.allow_private:
        try:
            target = pinned(attempt.url)
        except PrivateAddress:
            return Outcome(None, NOT_PUBLIC, final=True)
        except OSError as exc:
            words = str(exc)[:150]
            return Outcome(None, f"{words[:1].upper()}{words[1:]}.")
        except ValueError:  # a host no resolver takes (not IDNA, say)
            return Outcome(None, "The endpoint's host name is not valid.", final=True)
    try:
        with http.stream(
            "POST",
            target.url,
            content=attempt.body.encode(),
            headers={**headers, **target.headers},
            extensions=target.extensions,
            timeout=timeout,
        ) as answer:
            status = answer.status_code
    except httpx.ConnectTimeout:
        return Outcome(None, f"No connection within {policy.connect_timeout:g} s.")
    except httpx.TimeoutException:
        return Outcome(None, f"No answer within {policy.read_timeout:g} s.")
    except httpx.HTTPError as exc:
        return Outcome(None, f"The request failed: {type(exc).__name__}.")
    except Exception as exc:
        # An outcome all the same (a URL the client cannot send to, say), so the attempt
        # is recorded and retried by its rules, never left claimed for the sweeper forever.
        log.exception("webhook delivery %s: the request could not be made", attempt.delivery_id)
        return Outcome(None, f"The request could not be made: {type(exc).__name__}.")
    if 200 <= status < 300:
        return Outcome(status, None)
    return Outcome(status, f"The endpoint answered {status}.")


def _record(
    session: Session, attempt: Attempt, outcome: Outcome, policy: Policy, now: datetime
) -> float | None:
    """Write the attempt's outcome; the seconds until the next attempt, if there is one."""
    delivery = session.get(WebhookDelivery, attempt.delivery_id, with_for_update=True)
    if delivery is None or delivery.claim != attempt.claim:
        session.commit()
        return None  # deleted meanwhile, or its claim expired and another task took it
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status, delivery.last_error = outcome.status, outcome.error
    delivery.claim = delivery.claimed_at = None
    log.info(
        "webhook delivery %s (%s) to %s, attempt %d: %s",
        delivery.id,
        attempt.msg_id,
        "CHUTE_WEBHOOK_URL" if attempt.endpoint_id is None else f"endpoint {attempt.endpoint_id}",
        delivery.attempts,
        outcome.status if outcome.delivered else outcome.error,
    )
    retry_in: float | None = None
    if outcome.delivered:
        delivery.state, delivery.delivered_at, delivery.next_attempt_at = (
            DeliveryState.DELIVERED,
            now,
            None,
        )
    elif outcome.status == 410:
        delivery.state, delivery.next_attempt_at = DeliveryState.FAILED, None
        _disable(session, attempt, now)
    elif outcome.final:
        delivery.state, delivery.next_attempt_at = DeliveryState.FAILED, None
    else:
        retry_in = policy.backoff(delivery.attempts)
        if now + timedelta(seconds=retry_in) > delivery.give_up_at:
            delivery.state, delivery.next_attempt_at, retry_in = DeliveryState.FAILED, None, None
            delivery.last_error = f"{outcome.error} Given up after {delivery.attempts} attempts."[
                :200
            ]
        else:
            delivery.next_attempt_at = now + timedelta(seconds=retry_in)
    session.commit()
    return retry_in


def _disable(session: Session, attempt: Attempt, now: datetime) -> None:
    """410 Gone: the receiver asks for no more deliveries."""
    if attempt.endpoint_id is None:
        log.warning("CHUTE_WEBHOOK_URL answered 410 Gone; its deliveries go on (remove it)")
        return
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == attempt.endpoint_id, WebhookEndpoint.disabled_at.is_(None))
        .values(disabled_at=now)
    )
    log.info("webhook endpoint %s answered 410 Gone: disabled", attempt.endpoint_id)


def lost_deliveries(
    sessions: sessionmaker[Session], policy: Policy, overdue: float, now: datetime
) -> list[int]:
    """Pending deliveries overdue by `overdue` seconds and claimed by no live attempt:
    their task was lost. Each is taken once (its due time moved to `now`, conditionally),
    however many sweepers saw it; the caller enqueues those returned."""
    cutoff = now - timedelta(seconds=overdue)
    stale_claim = now - policy.lease
    lost = [
        WebhookDelivery.state == DeliveryState.PENDING,
        WebhookDelivery.next_attempt_at < cutoff,
        or_(WebhookDelivery.claimed_at.is_(None), WebhookDelivery.claimed_at < stale_claim),
    ]
    with sessions() as session:
        ids = list(
            session.scalars(select(WebhookDelivery.id).where(*lost).order_by(WebhookDelivery.id))
        )

    def take(session: Session, delivery_id: int) -> bool:
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, *lost)
            .values(next_attempt_at=now)
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    return [delivery_id for delivery_id in ids if in_transaction(sessions, take, delivery_id)]
