"""The task queue: Huey, on SQLite (embedded) or Redis (scale-out), with one task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

RUN_JOB = "chute.run_job"


def make_huey(url: str, name: str = "chute") -> Huey:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = Path(parsed.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(name=name, filename=str(path))
    if parsed.scheme == "redis":
        # Every API process and worker on every host shares the queue under `name`.
        return RedisHuey(name=name, url=url)
    raise ValueError(f"unsupported queue URL scheme: {parsed.scheme!r}")


class JobQueue:
    """Hands job ids to workers. Enqueueing twice is harmless: a worker claims a job only
    with a conditional `queued -> running` update, so a second task finds nothing to do."""

    def __init__(self, huey: Huey, run_job: Callable[[int], None]) -> None:
        self.huey = huey
        self._task: Any = huey.task(name=RUN_JOB)(run_job)

    def enqueue(self, job_id: int) -> None:
        self._task(job_id)

    def check_ready(self) -> None:
        """Raise unless the queue's store answers now (`GET /readyz`)."""
        self.huey.pending_count()
