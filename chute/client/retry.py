"""When to try a request again, how long to wait before it, and the one loop that does.

Network errors (a stalled request cut off included), 5xx, 408, 423, 429 and 507 are
worth another try: the server is restarting, overloaded, short of disk for a while,
cut off a request whose body stopped coming (408), or still holds the chunk for a
request that died (423). A 507 of the user's storage quota is not: it says
`Chute-Quota`, and only deleting jobs (or an admin) makes room. Every other 4xx is an
answer about the request itself, and sending it again would get the same answer: a 409
for a chunk whose bytes differ from those the server holds stays final.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from chute.client.errors import ApiError, detail_of

# 408: the server cut off a request whose body went quiet (DESIGN §2), 423: the part is
# still held by a request the server has not yet cut off; both say "send it again".
RETRY_STATUSES = frozenset({408, 423, 429, 507})


def retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUSES


def retryable(response: httpx.Response) -> bool:
    """A 507 of the user's storage quota (`Chute-Quota`), unlike a full disk's, is final:
    waiting does not free the user's room, deleting jobs does."""
    return retryable_status(response.status_code) and "chute-quota" not in response.headers


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, when it sent one as a number."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Aborted(Exception):
    """Sending stopped on purpose: another chunk failed, or the user interrupted."""


class GaveUp(Exception):
    """Every try the policy allows failed; `failure` is the last one's error."""

    def __init__(self, failure: Exception, tries: int) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.tries = tries


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

    def run(
        self,
        send: Callable[[], httpx.Response],
        *,
        on_retry: Callable[[Exception, float], None],
        may_repeat: Callable[[httpx.Response | httpx.TransportError], bool] = lambda _: True,
        stop: threading.Event | None = None,
    ) -> httpx.Response:
        """Call `send` until it gets an answer not worth another try, and return it
        (a success, or an error answer for the caller to raise).

        A failure `may_repeat` refuses is not tried again: a network error is raised as
        it is, an error answer returned. Between tries,
        `on_retry(failure, wait)` is told, then the wait is the larger of the backoff's
        and the server's Retry-After. Raises `GaveUp` when the tries run out, and
        `Aborted` when `stop` is set during a wait.
        """
        delays = self.delays()
        tries = 0
        while True:
            tries += 1
            floor = 0.0
            try:
                response = send()
            except httpx.TransportError as exc:
                if not may_repeat(exc):
                    raise
                failure: Exception = exc
            else:
                if not (retryable(response) and may_repeat(response)):
                    return response
                failure = ApiError(response.status_code, detail_of(response))
                floor = retry_after(response) or 0.0
            wait = next(delays, None)
            if wait is None:
                raise GaveUp(failure, tries)
            wait = max(wait, floor)
            on_retry(failure, wait)
            if not self.pause(wait, stop):
                raise Aborted
