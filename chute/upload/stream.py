"""The upload core's byte path, shared by both front doors: from the request stream to
durable storage, one part at a time.

A worker thread counts, hashes, checks and writes each 1 MiB batch while the event loop
receives the next one, so parsing, hashing and disk writes overlap, and no more than two
batches of a part are ever in memory. Around it: the part's lock (so no other request
writes the same part meanwhile), the room check, the writer's commit (after which the
bytes are durable) and the queue, told about an upload that a record completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from chute.errors import ChuteError, Problem
from chute.runtime import Runtime
from chute.storage import Part, PartRefused, PartWriter, StorageError, StorageFull
from chute.storage.base import HeldPart

log = logging.getLogger(__name__)
T = TypeVar("T")
Buffer = bytes | memoryview

BATCH = 1024 * 1024


class Body:
    """The request body, read once; what is left can be drained before an error answer."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self.exhausted = False

    async def read(self, limit: int) -> AsyncIterator[bytes]:
        """The body's pieces; 413 once more than `limit` bytes came."""
        seen = 0
        async for piece in self._stream:
            seen += len(piece)
            if seen > limit:
                raise ChuteError(Problem.BODY_TOO_LARGE, limit=limit)
            yield piece
        self.exhausted = True

    async def drain(self, limit: int) -> None:
        """Read and drop up to `limit` bytes, so the client is not cut off mid-send and
        sees the answer. A longer body is left unread: the connection will close."""
        if self.exhausted:
            return
        seen = 0
        with contextlib.suppress(Exception):
            async for piece in self._stream:
                seen += len(piece)
                if seen > limit:
                    return
            self.exhausted = True


class UploadSlots:
    """How many upload requests each user has in flight in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[int, int] = {}

    @contextlib.contextmanager
    def take(self, user_id: int) -> Iterator[None]:
        if self._in_flight.get(user_id, 0) >= self.limit:
            raise ChuteError(Problem.TOO_MANY_UPLOADS)
        self._in_flight[user_id] = self._in_flight.get(user_id, 0) + 1
        try:
            yield
        finally:
            self._in_flight[user_id] -= 1
            if not self._in_flight[user_id]:
                del self._in_flight[user_id]


@contextlib.contextmanager
def storage_errors(held_open: Callable[[], bool] | None = None) -> Iterator[None]:
    """The storage contract's exceptions as the client's problems; the cause goes to the log.

    An upload the storage does not have was discarded meanwhile, unless `held_open` says
    the database still holds it open: then the storage failed (`core.held_open`)."""
    try:
        yield
    except StorageFull:
        raise ChuteError(Problem.STORAGE_FULL) from None
    except PartRefused as exc:
        raise ChuteError(Problem.PART_REFUSED, why=str(exc)) from None
    except FileNotFoundError as exc:
        if held_open is not None and held_open():
            log.error("storage: %s, yet the database holds this upload open", exc)
            raise ChuteError(Problem.STORAGE_UNAVAILABLE) from None
        raise ChuteError(Problem.UPLOAD_REPLACED) from None
    except StorageError as exc:
        log.error("storage: %s", exc)
        raise ChuteError(Problem.STORAGE_UNAVAILABLE) from None


class Sink(Protocol):
    def write(self, data: Buffer) -> None: ...


class Feeder(Protocol):
    """Sees the first bytes of a file as they pass (`CsvStartCheck`, `HeadKeeper`)."""

    def feed(self, data: bytes | bytearray) -> None: ...


class Pipeline:
    """Runs in a worker thread, one batch at a time, in order: count, hash, check, write."""

    def __init__(
        self,
        limit: int,
        over_limit: ChuteError,
        writer: Sink | None,
        check: Feeder | None = None,
        held_open: Callable[[], bool] | None = None,
    ) -> None:
        self.limit = limit
        self.over_limit = over_limit
        self.writer = writer
        self.check = check
        self.held_open = held_open
        self.size = 0
        self.hash = hashlib.sha256()
        # Extra digests the sender asked for (tus Upload-Checksum), fed the same bytes.
        self.also: list[hashlib._Hash] = []

    def process(self, pieces: list[Buffer]) -> None:
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise self.over_limit
            self.hash.update(piece)
            for digest in self.also:
                digest.update(piece)
            if self.check is not None:
                self.check.feed(bytes(piece))  # the file's start only; `in` needs bytes
            if self.writer is not None:
                with storage_errors(self.held_open):
                    self.writer.write(piece)


class PartPath:
    """One request's use of the byte path: typed steps, each run off the event loop."""

    def __init__(self, rt: Runtime, executor: Executor) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.executor = executor

    async def in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def lock(self, stack: contextlib.AsyncExitStack, storage_id: str, index: int) -> HeldPart:
        """Hold part `index`'s lock until `stack` closes; 423 past the lock timeout."""
        lock = self.rt.part_locks.lock_part(storage_id, index, self.settings.chunk_lock_timeout)
        try:
            held = await self.in_thread(lock.__enter__)
        except TimeoutError:
            raise ChuteError(Problem.CHUNK_BUSY, index=index) from None
        except FileNotFoundError:
            raise ChuteError(Problem.UPLOAD_REPLACED) from None

        async def release(*_: object) -> None:
            await self.in_thread(lambda: lock.__exit__(None, None, None))

        stack.push_async_exit(release)
        return held

    def check_room(self, free: int | None, most: int) -> None:
        """507 unless `most` bytes more leave CHUTE_MIN_FREE_BYTES free."""
        if free is not None and free - most < self.settings.min_free_bytes:
            raise ChuteError(Problem.STORAGE_FULL)

    async def open_writer(
        self, stack: contextlib.AsyncExitStack, storage_id: str, part: Part
    ) -> PartWriter:
        """A writer for `part`, aborted when `stack` closes unless committed before."""
        storage = self.rt.storage
        self.check_room(await self.in_thread(storage.free_bytes), part.room)
        with storage_errors():
            writer = await self.in_thread(lambda: storage.open_part(storage_id, part))
        stack.callback(writer.abort)
        return writer

    async def pump(self, source: AsyncIterator[Buffer], pipeline: Pipeline) -> None:
        """Feed `source` to the pipeline in batches, one batch in the thread while the next
        fills. A batch is a list of the pieces as they came off the socket (views, not
        copies), so no byte is copied in Python on its way from the request to the disk."""
        loop = asyncio.get_running_loop()
        batch: list[Buffer] = []
        batched = 0
        pending: asyncio.Future[None] | None = None
        try:
            async for piece in source:
                batch.append(piece)
                batched += len(piece)
                if batched >= BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(self.executor, pipeline.process, batch)
                    batch, batched = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await loop.run_in_executor(self.executor, pipeline.process, batch)
        finally:
            if pending is not None:
                # Never leave a thread writing to a part that the caller is about to abort.
                await asyncio.wait([pending])

    async def commit(
        self, writer: PartWriter, held: HeldPart, held_open: Callable[[], bool], index: int
    ) -> None:
        """Make the part's bytes durable; a part whose lock was taken over never commits."""
        if not held.still_held():
            raise ChuteError(Problem.CHUNK_BUSY, index=index)

        def commit() -> None:
            with storage_errors(held_open):
                writer.commit()

        await self.in_thread(commit)

    async def enqueue(self, job_id: int) -> None:
        """Tell the queue about a job whose upload a record just completed."""
        try:
            await self.in_thread(lambda: self.rt.queue.enqueue(job_id))
        except Exception:
            # The job is queued in the database; the sweeper enqueues it again.
            log.exception("could not enqueue job %s", job_id)
