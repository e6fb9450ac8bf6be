"""Chute's log lines (DESIGN §8): text by default, one JSON object per line with
CHUTE_LOG_FORMAT=json, every process alike (API, worker, job processes).

A request's lines carry its id (`request_id`: the client's `X-Request-ID` when it is a
plain token, else a new one, and sent back in the answer's `X-Request-ID`). Lines about
an upload or a job say whose and which (`user_id`, `job_id`) as `extra` fields. No line
carries a password, a token or a request's headers: the access log names method, path
and status, and paths hold no secrets.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("chute_request_id", default=None)

# Fields a log call may pass as `extra=`, written as they are.
EXTRA_FIELDS = ("user_id", "job_id", "chunk", "bytes", "protocol", "kind", "status", "seconds")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.get()) is not None:
            line["request_id"] = rid
        for name in EXTRA_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        # ensure_ascii: control characters and newlines are escaped, so one line it is.
        return json.dumps(line, default=str)


class _WithRequestId(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = request_id.get()
        return f"{text} [request {rid}]" if rid is not None else text


def configure(log_format: str) -> None:
    """Send every logger's lines to stderr in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else _WithRequestId(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # uvicorn's own loggers go through the root's handler, in the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
