"""How far an upload is, reported to an `on_progress` callback.

The callback is called from the upload's sender threads, often (every block of a
chunk handed to the socket): it should be quick and must be thread-safe. It gets a
snapshot, never the live counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    job_id: int
    total_bytes: int
    total_chunks: int
    # Bytes the server held before this run started: they are not sent again.
    held_bytes: int
    # Bytes handed to the socket in this run, for chunks in flight and done; a chunk
    # that has to be sent again takes its bytes back out.
    sent_bytes: int
    chunks_done: int  # held or confirmed by the server

    @property
    def done_bytes(self) -> int:
        return self.held_bytes + self.sent_bytes

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """The live counters behind `Progress`, shared by the sender threads."""

    def __init__(
        self, job_id: int, total_bytes: int, total_chunks: int, callback: ProgressCallback | None
    ) -> None:
        self._lock = threading.Lock()
        self._callback = callback
        self._job_id = job_id
        self._total_bytes = total_bytes
        self._total_chunks = total_chunks
        self._held = 0
        self._sent = 0
        self._chunks_done = 0

    def snapshot(self) -> Progress:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> Progress:
        return Progress(
            self._job_id,
            self._total_bytes,
            self._total_chunks,
            self._held,
            self._sent,
            self._chunks_done,
        )

    def _update(self, held: int = 0, sent: int = 0, chunks: int = 0) -> None:
        with self._lock:
            self._held += held
            self._sent += sent
            self._chunks_done += chunks
            snapshot = self._snapshot()
        if self._callback is not None:
            self._callback(snapshot)

    def held(self, size: int) -> None:
        self._update(held=size, chunks=1)

    def streamed(self, size: int) -> None:
        self._update(sent=size)

    def rewound(self, size: int) -> None:
        self._update(sent=-size)

    def confirmed(self) -> None:
        self._update(chunks=1)

    def start(self) -> None:
        self._update()
