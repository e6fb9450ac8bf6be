"""When to try a request again, and how long to wait before it.

Network errors, 5xx, 429 and 507 are worth another try: the server is restarting,
overloaded, or short of disk for a while. Every other 4xx is an answer about the
request itself, and sending it again would get the same answer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 507})


def retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUSES


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, when it sent one as a number."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: try n waits up to `base * 2**n`, capped.

    Full jitter (a uniform draw from zero to the bound) keeps many clients that failed
    together, say at a server restart, from all coming back in the same instant.
    The defaults ride out about a minute of a server being away.
    """

    attempts: int = 10
    base: float = 0.5
    cap: float = 15.0

    def delays(self) -> Iterator[float]:
        """One wait before each try after the first; `attempts - 1` of them."""
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.cap, self.base * 2**n))

    def pause(self, delay: float, stop: threading.Event | None = None) -> bool:
        """Wait `delay` seconds; False when `stop` was set meanwhile."""
        if stop is None:
            threading.Event().wait(delay)
            return True
        return not stop.wait(delay)
