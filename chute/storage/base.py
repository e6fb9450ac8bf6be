"""The storage contract, modelled on S3 multipart: begin, put part, complete, abort, open, delete.

The upload core validates offsets, sizes and checksums; a backend only moves
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


class PartRefused(Exception):
    """The backend cannot keep a part as it came (its own rules on parts); the text says
    why in plain words, for the client."""


@dataclass(frozen=True)
class Part:
    """A part about to be written: where it goes and what is known of it before its bytes."""

    # Its number in the upload. Once placed, a part with a larger offset has a larger index.
    index: int
    # Where it starts in the file, or None while that is not known: the backend then keeps
    # the part aside until `complete` learns where it goes.
    offset: int | None
    # The most bytes it may have, so a backend can claim the room up front.
    most: int
    # Its size, when the sender announced it before the bytes (a Content-Length). A
    # backend may rely on it and refuse the part when the bytes that come differ.
    size: int | None = None
    # Whether the part ends the file, when known.
    last: bool | None = None
    # The upload's part size, when known: no part crosses a multiple of it.
    part_size: int | None = None

    @property
    def room(self) -> int:
        """The room the part needs at most: its announced size, within `most`."""
        return self.most if self.size is None else min(self.size, self.most)


@dataclass(frozen=True)
class PlacedPart:
    """A recorded part, for `complete`: where it starts, how long it is, and whether it was
    written at its offset (`placed`) or kept aside because its offset was not known yet."""

    index: int
    offset: int
    size: int
    placed: bool = True
    # The upload's part size when its parts were cut at multiples of it (tus), as
    # `Part.part_size` said when they were written.
    part_size: int | None = None


def file_size(parts: Sequence[PlacedPart]) -> int:
    """The size of the file that recorded `parts` (in file order) make."""
    return parts[-1].offset + parts[-1].size if parts else 0


class PartWriter(Protocol):
    """Receives one part's bytes in order, from one thread at a time."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self) -> None:
        """Return once every byte written is durable. Raises StorageFull or PartRefused."""

    def abort(self) -> None:
        """Drop what was written; safe to call after a failed write or commit."""


class Storage(ABC):
    # The most parts one upload may have, when the backend has a limit (told to clients).
    max_parts: int | None = None

    def part_size(self, wanted: int, length: int) -> int:
        """The part size to use for a file of `length` bytes when the server would use
        `wanted`: a backend with rules on parts (S3) raises it so the file fits them."""
        return wanted

    def check_part(self, part: Part) -> None:
        """Refuse (PartRefused) a part this backend can never take, judged from what is
        known before its bytes; the caller asks before it records anything of a request.
        A backend without rules on parts takes any."""
        return None

    @abstractmethod
    def begin(self, key: str) -> str:
        """Start an upload whose file `complete` will store as `key`; return its id."""

    @abstractmethod
    def open_part(self, upload_id: str, part: Part) -> PartWriter:
        """Open a writer for one part of an upload. A committed part replaces any earlier
        bytes at the same place whole. Raises PartRefused, StorageFull, FileNotFoundError
        (no such upload)."""

    @abstractmethod
    def complete(self, upload_id: str, key: str, parts: Sequence[PlacedPart]) -> None:
        """Assemble the upload, whose recorded parts in file order are `parts`, into the
        file `key`. Idempotent."""

    @abstractmethod
    def concatenate(self, upload_id: str, key: str, sources: Sequence[str]) -> None:
        """Complete the upload `upload_id` (begun with `begin(key)`, no part written to it)
        into the file `key`: the stored files `sources` (keys that `complete` or `put_file`
        stored) end to end, in order; then remove the sources. Idempotent: once `key` is
        stored, calling it again changes nothing (sources already gone is fine then).

        Raises ValueError for no sources, a source named twice or one that is `key`
        (`check_sources`), FileNotFoundError when a source is missing (nothing is stored
        then, and the upload stays pending), StorageFull, StorageError."""

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

    def check_ready(self) -> int | None:
        """Raise StorageError unless the backend answers now (`GET /readyz`); the room
        left, when the backend can tell (`free_bytes`)."""
        try:
            return self.free_bytes()
        except OSError as exc:
            raise StorageError(f"the storage does not answer: {exc.strerror or exc}") from exc


def check_sources(key: str, sources: Sequence[str]) -> list[str]:
    """The sources of a concatenation into `key`, once they make sense: at least one, none
    twice (its bytes would be removed after the first use), none the file itself."""
    listed = list(sources)
    if not listed:
        raise ValueError("a concatenation needs at least one source")
    if len(set(listed)) != len(listed):
        raise ValueError("a concatenation names a source twice")
    if key in listed:
        raise ValueError(f"a concatenation into {key!r} names it as a source")
    return listed


class HeldPart(Protocol):
    """A part's lock while it is held."""

    def still_held(self) -> bool:
        """False once another writer may have taken the part over: do not commit then."""


class HeldForGood:
    """A lock that only its holder's end releases (a file lock): never taken over."""

    def still_held(self) -> bool:
        return True


@runtime_checkable
class PartLocking(Protocol):
    """Capability: a lock that keeps two writers of the same part from mixing their bytes.

    Backends that write parts in place (local disk) need it; object stores, whose part
    uploads replace each other whole, do not.
    """

    def lock_part(
        self, upload_id: str, index: int, timeout: float
    ) -> AbstractContextManager[HeldPart]:
        """Hold the lock of one part; raise TimeoutError if not had within `timeout` s."""


@runtime_checkable
class LocalPaths(Protocol):
    """Capability: stored files are local files that readers such as DuckDB can open by
    path. Without it, a worker copies a file to its scratch space first."""

    def path(self, key: str) -> Path:
        """Where the stored file `key` is on this machine."""
