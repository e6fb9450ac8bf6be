"""The storage contract, modelled on S3 multipart: begin, put part, complete, abort, open, delete.

The upload service validates indexes, sizes and checksums; a backend only moves
bytes and says when they are durable. Methods block (they do file or network
I/O) and are called from worker threads, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class StorageFull(Exception):
    """The backend has no room for the bytes; nothing of them is kept."""


class StorageError(Exception):
    """The backend failed (unreachable, credentials refused, ...); the text says why in
    plain words, for the server's log, and names no secret."""


@dataclass(frozen=True)
class StagedPart:
    """A recorded part whose offset was not known when it was written (see `open_part`)."""

    index: int
    size: int


class PartWriter(Protocol):
    """Receives one part's bytes in order, from one thread at a time."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self) -> None:
        """Return once every byte written is durable. Raises StorageFull."""

    def abort(self) -> None:
        """Drop what was written; safe to call after a failed write or commit."""


class Storage(ABC):
    # What a backend asks of the parts, for the upload service to check before any byte
    # moves: the exact size of a part when it is opened (an object store sends it ahead of
    # the bytes), the least bytes of every part but the last, the most parts of an upload.
    needs_part_size: bool = False
    min_part_size: int = 1
    max_parts: int | None = None

    @abstractmethod
    def begin(self, key: str) -> str:
        """Start an upload whose file `complete` will store as `key`; return its id."""

    @abstractmethod
    def open_part(
        self, upload_id: str, index: int, offset: int | None, reserve: int, size: int | None = None
    ) -> PartWriter:
        """Open a writer for part `index` of an upload.

        `offset` is where the part starts in the assembled file (`index * chunk_size`), or
        None while the upload's chunk size is not known yet: the backend then keeps the part
        aside until `complete` learns where it goes. `reserve` is the most bytes the part
        may hold, so a backend can claim the room up front (and raise StorageFull early).
        `size` is the part's exact size when the caller knows it; a backend with
        `needs_part_size` is always given it, and `commit` fails unless exactly that many
        bytes were written. A committed part replaces any earlier bytes of the same index whole.
        """

    @abstractmethod
    def complete(
        self, upload_id: str, key: str, size: int, chunk_size: int, staged: Sequence[StagedPart]
    ) -> None:
        """Assemble the upload into the file `key` of `size` bytes. Idempotent."""

    @abstractmethod
    def abort(self, upload_id: str) -> None:
        """Remove an unfinished upload and all its parts. Idempotent."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open a stored file for reading."""

    @abstractmethod
    def put_file(self, key: str, source: Path) -> None:
        """Store the local file `source` as `key`, durably; `source` may be moved away."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a stored file. Idempotent."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every stored file whose key starts with `prefix` (a folder: ends in /)."""

    def free_bytes(self) -> int | None:
        """Room left for new bytes, when the backend can tell."""
        return None


@runtime_checkable
class PartLocking(Protocol):
    """Capability: a lock that keeps two writers of the same part from mixing their bytes.

    Backends that write parts in place (local disk) need it; object stores, whose part
    uploads replace each other whole, do not.
    """

    def lock_part(
        self, upload_id: str, index: int, timeout: float
    ) -> AbstractContextManager[object]:
        """Hold the lock of one part; raise TimeoutError if not had within `timeout` s."""


@runtime_checkable
class LocalPaths(Protocol):
    """Capability: stored files are local files that readers such as DuckDB can open by
    path. Without it, a worker copies a file to its scratch space first."""

    def path(self, key: str) -> Path:
        """Where the stored file `key` is on this machine."""
