"""A bandwidth limit shared by every chunk in flight (`--limit-rate`)."""

from __future__ import annotations

import threading
import time


class Throttle:
    """Lets `rate` bytes a second through, over all threads together.

    Each caller books its bytes on one shared timeline and sleeps until its slot;
    so a burst is never larger than what was asked, and idle time is not saved up.
    """

    def __init__(self, rate: int) -> None:
        if rate < 1:
            raise ValueError("the rate must be at least 1 byte a second")
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    @property
    def block_size(self) -> int:
        """Blocks small enough for about ten slots a second, so the rate looks smooth."""
        return max(4096, min(1024 * 1024, self.rate // 10))

    def take(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + size / self.rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)
