"""The webhook queue: a Huey queue of its own beside the jobs' one, so a slow receiver
holds only a delivery thread, never a job's; and the hook that enqueues deliveries once
the transaction that wrote them commits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from huey.api import Huey
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from chute.webhooks.events import CONFIG_KEY, NEW_KEY, EventConfig

log = logging.getLogger(__name__)

DELIVER = "chute.deliver_webhook"


def queue_name(jobs_queue: str) -> str:
    """The webhook queue's name (its key prefix on Redis), from the jobs queue's."""
    return f"{jobs_queue}.webhooks"


class WebhookQueue:
    """Hands delivery ids to the webhook threads of workers. Enqueueing one twice is
    harmless: an attempt claims its delivery first, and a second task finds it taken,
    done or not yet due."""

    def __init__(self, huey: Huey, deliver: Callable[[int], None]) -> None:
        self.huey = huey
        self._task: Any = huey.task(name=DELIVER)(deliver)

    def enqueue(self, delivery_id: int) -> None:
        self._task(delivery_id)

    def enqueue_in(self, delivery_id: int, seconds: float) -> None:
        self._task.schedule(args=(delivery_id,), delay=seconds)


def enqueue_on_commit(
    sessions: sessionmaker[Session], queue: WebhookQueue, config: EventConfig
) -> None:
    """Sessions of `sessions` carry `config` for the events they write, and enqueue the
    deliveries written in a transaction once it commits (forget them if it rolls back).

    An enqueue that fails is logged, never raised: the state change is committed, and the
    sweeper finds the delivery again (`chute.webhooks.delivery.lost_deliveries`).
    """
    sessions.configure(info={CONFIG_KEY: config})

    @event.listens_for(sessions, "after_commit")
    def _enqueue(session: Session) -> None:
        for delivery_id in session.info.pop(NEW_KEY, []):
            try:
                queue.enqueue(delivery_id)
            except Exception:
                log.exception("enqueueing webhook delivery %s failed", delivery_id)

    @event.listens_for(sessions, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(NEW_KEY, None)
