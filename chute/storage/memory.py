"""In-memory storage, for fast tests: the storage contract with bytes in dicts.

It keeps the contract as strictly as the real backends do, so that what passes over it
passes over them:
- a part's bytes stay with its writer until `commit`, which puts them in place whole
  (replacing an earlier commit of the same part); `abort` drops them;
- a part whose size was announced (`Part.size`) must bring exactly that many bytes;
- `complete` takes only parts that were committed as recorded (same offset, same size,
  kept aside or not), contiguous from byte 0 with rising indices, and refuses the rest
  with StorageError, naming the part;
- `concatenate` takes only an upload with no part committed, and stored sources;
- an optional capacity makes it run out of room like a disk: `open_part` claims the part's
  room up front, as local disk preallocates it, and StorageFull says when there is none.

Part locks are real locks across threads, so tests of concurrent requests mean what they
say. There are no local paths (`LocalPaths`): a job worker copies the file to its scratch
space first, as it does for S3.

`CHUTE_STORAGE_URL=memory://<name>` opens the store called `name` in this process, made
on first use (`memory://<name>?capacity=<bytes>` gives it a capacity), so an app built in
a test's process and the test share it. Only for tests: each process has its own stores,
and they end with it.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urlparse

from chute.storage.base import (
    HeldForGood,
    Part,
    PartLocking,
    PartRefused,
    PartWriter,
    PlacedPart,
    Storage,
    StorageError,
    StorageFull,
    check_sources,
)


def _check_key(key: str) -> str:
    # The same rule as S3's: a key stays below the store's root.
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError("bad key")
    return key


@dataclass(frozen=True)
class _Committed:
    offset: int | None  # None: kept aside until `complete` places it
    data: bytes


@dataclass
class _Upload:
    key: str
    parts: dict[int, _Committed] = field(default_factory=dict)
    locks: dict[int, threading.Lock] = field(default_factory=dict)

    def held(self) -> int:
        return sum(len(p.data) for p in self.parts.values())


class _MemoryPartWriter:
    """Collects one part's bytes; they reach the store only at `commit`."""

    def __init__(self, store: MemoryStorage, upload_id: str, part: Part, claimed: int) -> None:
        self._store = store
        self._upload_id = upload_id
        self._part = part
        self._claimed = claimed
        self._buffer = bytearray()
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise ValueError("write to a part that was committed or aborted")
        n = memoryview(data).nbytes
        size = self._part.size
        if size is not None and len(self._buffer) + n > size:
            raise PartRefused(f"the part was announced with {size} bytes, but more came")
        more = len(self._buffer) + n - self._claimed
        if more > 0:
            self._store._claim(more)
            self._claimed += more
        self._buffer += data  # a copy: the caller may reuse its buffer

    def commit(self) -> None:
        if self._done:
            raise ValueError("commit of a part that was committed or aborted")
        size = self._part.size
        if size is not None and len(self._buffer) != size:
            came = len(self._buffer)
            self.abort()
            raise PartRefused(f"the part was announced with {size} bytes, but {came} came")
        self._done = True
        data, self._buffer = bytes(self._buffer), bytearray()
        self._store._commit(self._upload_id, self._part, data, self._claimed)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._buffer = bytearray()
            self._store._release(self._claimed)


class MemoryStorage(Storage, PartLocking):
    def __init__(self, capacity: int | None = None) -> None:
        # The most bytes it holds at once (stored files, committed parts and the room open
        # writers claimed); None: no limit.
        self.capacity = capacity
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        self._files: dict[str, bytes] = {}
        self._used = 0

    # Room, always changed under self._lock.

    def _claim(self, n: int) -> None:
        with self._lock:
            self._claim_locked(n)

    def _claim_locked(self, n: int) -> None:
        if self.capacity is not None and self._used + n > self.capacity:
            raise StorageFull(f"{n} bytes more do not fit in {self.capacity} bytes")
        self._used += n

    def _release(self, n: int) -> None:
        with self._lock:
            self._used -= n

    def _upload(self, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise FileNotFoundError(f"upload {upload_id} does not exist")
        return upload

    def _commit(self, upload_id: str, part: Part, data: bytes, claimed: int) -> None:
        with self._lock:
            self._used -= claimed
            upload = self._upload(upload_id)  # aborted meanwhile: its claim is released
            old = upload.parts.get(part.index)
            self._used += len(data) - (len(old.data) if old is not None else 0)
            upload.parts[part.index] = _Committed(part.offset, data)

    # The storage contract.

    def begin(self, key: str) -> str:
        upload_id = secrets.token_hex(16)
        with self._lock:
            self._uploads[upload_id] = _Upload(_check_key(key))
        return upload_id

    def open_part(self, upload_id: str, part: Part) -> PartWriter:
        reserve = part.room
        with self._lock:
            self._upload(upload_id)
            self._claim_locked(max(reserve, 0))
        return _MemoryPartWriter(self, upload_id, part, max(reserve, 0))

    def _pending(self, upload_id: str, key: str) -> _Upload | None:
        """The unfinished upload `upload_id` of `key`, or None once it stored `key`
        (under the lock)."""
        upload = self._uploads.get(upload_id)
        if upload is None:
            if key in self._files:
                return None
            raise FileNotFoundError(f"upload {upload_id} is neither pending nor complete")
        if key != upload.key:
            raise ValueError(f"upload {upload_id!r} was begun for another key than {key!r}")
        return upload

    def complete(self, upload_id: str, key: str, parts: Sequence[PlacedPart]) -> None:
        _check_key(key)
        with self._lock:
            upload = self._pending(upload_id, key)
            if upload is None:
                return  # completed before
            data = _assemble(upload, parts, f"completion of {key!r}")
            # The file takes the room its parts had; parts it does not use are dropped.
            old = self._files.get(key)
            self._used += len(data) - upload.held() - (len(old) if old is not None else 0)
            self._files[key] = data
            del self._uploads[upload_id]

    def concatenate(self, upload_id: str, key: str, sources: Sequence[str]) -> None:
        listed = [_check_key(source) for source in check_sources(_check_key(key), sources)]
        with self._lock:
            upload = self._pending(upload_id, key)
            if upload is None:
                return  # concatenated before
            if upload.parts:
                raise ValueError(f"upload {upload_id!r} has parts: it cannot be a concatenation")
            missing = [source for source in listed if source not in self._files]
            if missing:
                raise FileNotFoundError(f"concatenation into {key!r}: {missing[0]!r} is not stored")
            data = b"".join(self._files.pop(source) for source in listed)
            # The file takes the room its sources had.
            old = self._files.get(key)
            self._used -= len(old) if old is not None else 0
            self._files[key] = data
            del self._uploads[upload_id]

    def abort(self, upload_id: str) -> None:
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
            if upload is not None:
                self._used -= upload.held()

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            data = self._files.get(_check_key(key))
        if data is None:
            raise FileNotFoundError(key)
        return io.BytesIO(data)

    def put_file(self, key: str, source: Path) -> None:
        _check_key(key)
        data = source.read_bytes()
        with self._lock:
            old = self._files.get(key)
            self._claim_locked(len(data) - (len(old) if old is not None else 0))
            self._files[key] = data

    def delete(self, key: str) -> None:
        with self._lock:
            data = self._files.pop(_check_key(key), None)
            if data is not None:
                self._used -= len(data)

    def delete_prefix(self, prefix: str) -> None:
        if not prefix.endswith("/") or not prefix.strip("/"):
            raise ValueError("a prefix names a folder below the root and ends with /")
        _check_key(prefix.rstrip("/"))
        with self._lock:
            for key in [k for k in self._files if k.startswith(prefix)]:
                self._used -= len(self._files.pop(key))

    def free_bytes(self) -> int | None:
        if self.capacity is None:
            return None
        with self._lock:
            return max(self.capacity - self._used, 0)

    @contextlib.contextmanager
    def lock_part(self, upload_id: str, index: int, timeout: float) -> Iterator[HeldForGood]:
        with self._lock:
            lock = self._upload(upload_id).locks.setdefault(index, threading.Lock())
        if not lock.acquire(timeout=max(timeout, 0)):
            raise TimeoutError(f"part {index} is locked")
        try:
            yield HeldForGood()
        finally:
            lock.release()

    # For tests, to see what the store holds.

    def keys(self) -> set[str]:
        """Every stored file's key."""
        with self._lock:
            return set(self._files)

    def pending(self) -> dict[str, int]:
        """The unfinished uploads, by id, with the bytes their committed parts hold."""
        with self._lock:
            return {upload_id: u.held() for upload_id, u in self._uploads.items()}


def _assemble(upload: _Upload, parts: Sequence[PlacedPart], what: str) -> bytes:
    """The file that `parts` make, each checked against what was committed for it."""
    out = bytearray()
    previous = -1
    for part in parts:
        if part.index <= previous or part.offset != len(out):
            raise StorageError(
                f"{what}: part {part.index} at byte {part.offset} does not follow the "
                f"{len(out)} bytes of the parts before it"
            )
        previous = part.index
        committed = upload.parts.get(part.index)
        if committed is None:
            raise StorageError(f"{what}: part {part.index} is missing from the store")
        if len(committed.data) != part.size:
            raise StorageError(
                f"{what}: part {part.index} holds {len(committed.data)} bytes, not {part.size}"
            )
        expected = part.offset if part.placed else None
        if committed.offset != expected:
            where = "kept aside" if committed.offset is None else f"at {committed.offset}"
            raise StorageError(f"{what}: part {part.index} was written {where}, not as recorded")
        out += committed.data
    return bytes(out)


# The stores that memory:// URLs name, one per name in this process.
_named: dict[str, MemoryStorage] = {}
_named_lock = threading.Lock()


def storage_at(url: str) -> MemoryStorage:
    """The store a `memory://<name>[?capacity=<bytes>]` URL names, made on first use."""
    parsed = urlparse(url)
    if parsed.scheme != "memory" or not parsed.netloc:
        raise ValueError("a memory storage URL names its store: memory://<name>")
    query = parse_qs(parsed.query)
    capacity = int(query["capacity"][0]) if "capacity" in query else None
    with _named_lock:
        store = _named.setdefault(parsed.netloc, MemoryStorage(capacity))
    if store.capacity != capacity:
        raise ValueError(f"memory://{parsed.netloc} exists with a capacity of {store.capacity}")
    return store


def forget(name: str) -> None:
    """Drop the store called `name`; the next memory://<name> gets a new, empty one."""
    with _named_lock:
        _named.pop(name, None)
