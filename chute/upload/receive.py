"""Taking one chunk request: from the request stream to durable storage, then the record.

The file part's bytes go to storage as they arrive. A worker thread hashes and writes
each 1 MiB batch while the event loop receives the next one, so parsing, hashing and
disk writes overlap, and no more than two batches of a chunk are ever in memory.

Order of a request, and why:
1. fields checked, upload opened (a short transaction);
2. the part's lock taken, so no other request writes the same index meanwhile;
3. bytes hashed and written (or only hashed, for an index already recorded); a backend
   that needs the part's size first (S3) is told it, and the bytes must match it;
4. checks that need every byte (size, checksum, CSV start), then fdatasync;
5. the chunk recorded, which may complete the upload and queue the job;
6. lock released; the queue told about a completed upload.
Anything that fails before step 5 leaves nothing recorded.

A file part sent before the fields is kept in a spool file until they come, but only
once the job is known to be the sender's and to take data, and the disk to have room:
nobody can fill the disk with bytes for a job that is not theirs. The whole body, an
epilogue after the form included, is counted against the chunk limit plus the form's
overhead; a body that stops coming is cut off by `chute.api.limits` (408), and the
cleanup of any other error releases the part for the client's re-send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from chute.errors import ChuteError, Problem, invalid
from chute.runtime import Runtime
from chute.storage import PartWriter, StorageError, StorageFull
from chute.upload import service
from chute.upload.csvcheck import CsvStartCheck
from chute.upload.form import Field, FileData, FileEnd, FileStart, iter_form
from chute.upload.partlease import Lease
from chute.upload.protocol import ChunkRequest, add_field, has_position, parse_chunk_request

log = logging.getLogger(__name__)
T = TypeVar("T")
Buffer = bytes | memoryview

BATCH = 1024 * 1024
# Room for the form fields and part headers around a chunk's bytes.
FORM_OVERHEAD = 64 * 1024

MESSAGE_STORED = "Data chunk uploaded successfully"
MESSAGE_COMPLETE = "Data uploaded successfully and job started"


class Body:
    """The request body, read once; what is left can be drained before an error answer."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self.exhausted = False

    async def read(self, limit: int) -> AsyncIterator[bytes]:
        """The body's pieces; 413 once more than `limit` bytes came, wherever they are in
        the form (an epilogue after the closing boundary counts too)."""
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
def _storage_errors(held_open: Callable[[], bool] | None = None) -> Iterator[None]:
    """The storage contract's exceptions as the client's problems; the cause goes to the log.

    An upload the storage does not have was discarded meanwhile, unless `held_open` says
    the database still holds it open: then the storage failed (`service.held_open`)."""
    try:
        yield
    except StorageFull:
        raise ChuteError(Problem.STORAGE_FULL) from None
    except FileNotFoundError as exc:
        if held_open is not None and held_open():
            log.error("storage: %s, yet the database holds this upload open", exc)
            raise ChuteError(Problem.STORAGE_UNAVAILABLE) from None
        raise ChuteError(Problem.UPLOAD_REPLACED) from None
    except StorageError as exc:
        log.error("storage: %s", exc)
        raise ChuteError(Problem.STORAGE_UNAVAILABLE) from None


def _commit(writer: PartWriter, held_open: Callable[[], bool] | None) -> None:
    """In a worker thread: `held_open` asks the database, which must not block the loop."""
    with _storage_errors(held_open):
        writer.commit()


class _Sink(Protocol):
    def write(self, data: Buffer) -> None: ...


class _Pipeline:
    """Runs in a worker thread, one batch at a time, in order: count, hash, check, write."""

    def __init__(
        self,
        limit: int,
        over_limit: ChuteError,
        writer: _Sink | None,
        check: CsvStartCheck | None,
        expected: int | None = None,
    ) -> None:
        self.limit = limit
        self.over_limit = over_limit
        self.writer = writer
        self.check = check
        # The exact size the storage was told (the file part read as the form's last part).
        self.expected = expected
        self.size = 0
        self.hash = hashlib.sha256()
        self.held_open: Callable[[], bool] | None = None

    def process(self, pieces: list[Buffer]) -> None:
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise self.over_limit
            if self.expected is not None and self.size > self.expected:
                # More bytes than the storage was told: the form does not end with the file
                # part. Read on, writing nothing: `_finish` says so, unless the body ends
                # without its closing boundary, which is said first (malformed).
                continue
            self.hash.update(piece)
            if self.check is not None:
                self.check.feed(bytes(piece))  # chunk 0 only; `in` needs bytes, not a view
            if self.writer is not None:
                with _storage_errors(self.held_open):
                    self.writer.write(piece)

    def wrong_size(self) -> ChuteError:
        return ChuteError(
            Problem.FILE_PART_NOT_LAST,
            why=f"the Content-Length leaves {self.expected} bytes for the file part, "
            f"but {'more' if self.size > (self.expected or 0) else self.size} came",
        )


async def _pump(source: AsyncIterator[Buffer], pipeline: _Pipeline, executor: Executor) -> None:
    """Feed `source` to the pipeline in batches, one batch in the thread while the next fills.

    A batch is a list of the pieces as they came off the socket (views, not copies), so
    no byte of a chunk is copied in Python on its way from the request to the disk.
    """
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
                pending = loop.run_in_executor(executor, pipeline.process, batch)
                batch, batched = [], 0
        if pending is not None:
            await pending
            pending = None
        if batch:
            await loop.run_in_executor(executor, pipeline.process, batch)
    finally:
        if pending is not None:
            # Never leave a thread writing to a part that the caller is about to abort.
            await asyncio.wait([pending])


async def _file_bytes(events: AsyncIterator[Any]) -> AsyncIterator[Buffer]:
    async for event in events:
        if isinstance(event, FileData):
            yield event.data
        elif isinstance(event, FileEnd):
            return
    raise ChuteError(Problem.MALFORMED_FORM, why="the file part has no end")


async def _read_to_its_end(source: AsyncIterator[Buffer], size: int) -> None:
    """Read a file part whose size was predicted, before it is refused on that size.

    A size predicted from the Content-Length holds only for a form that ends with the file
    part: a body that ends otherwise is answered as what it is (malformed, or the file part
    not last), not refused for a size it does not have. The request's Content-Length,
    within the chunk limit, bounds what is read; the body is read before any answer anyway.
    """
    seen = 0
    async for piece in source:
        seen += len(piece)
    if seen != size:
        raise ChuteError(
            Problem.FILE_PART_NOT_LAST,
            why=f"the Content-Length leaves {size} bytes for the file part, but {seen} came",
        )


class _SpoolWriter:
    """The file part, kept in a temporary file until the fields after it say where it goes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="spool-", dir=directory)
        self.fd = fd
        self.path = Path(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.path.unlink(missing_ok=True)


async def _read_file(path: Path, executor: Executor) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    with path.open("rb", buffering=0) as f:
        while block := await loop.run_in_executor(executor, f.read, BATCH):
            yield block


@dataclass
class _Stored:
    request: ChunkRequest
    plan: service.ChunkPlan
    pipeline: _Pipeline
    writer: PartWriter | None
    # The part's lease in the database, on storage that has no part locks of its own.
    lease: Lease | None = None


class ChunkReceiver:
    """One upload-data request. Use `receive`; it returns the answer's JSON."""

    def __init__(
        self, rt: Runtime, executor: Executor, slots: UploadSlots, user_id: int, job_id: int
    ) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.executor = executor
        self.slots = slots
        self.user_id = user_id
        self.job_id = job_id
        # The request's Content-Length: no chunk in it is larger.
        self.declared: int | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args))

    def _in_session(self, fn: Callable[..., T], *args: Any) -> T:
        with self.rt.sessions() as session:
            return fn(session, *args)

    async def receive(
        self, content_type: str | None, content_length: int | None, body: Body
    ) -> dict[str, Any]:
        limit = self.settings.max_chunk_bytes + FORM_OVERHEAD
        if content_length is not None and content_length > limit:
            raise ChuteError(Problem.CHUNK_TOO_LARGE, limit=self.settings.max_chunk_bytes)
        self.declared = content_length
        try:
            with self.slots.take(self.user_id):
                return await self._receive(content_type, content_length, body, limit)
        except ChuteError:
            await body.drain(limit)
            raise

    async def _receive(
        self, content_type: str | None, content_length: int | None, body: Body, limit: int
    ) -> dict[str, Any]:
        fields: dict[str, str] = {}
        # A backend that needs a part's size before its bytes (S3) is told the file part's
        # size: predicted from Content-Length when the fields come first, else the spool's.
        needs_size = self.rt.storage.needs_part_size
        async with contextlib.AsyncExitStack() as stack:
            stored: _Stored | None = None
            spool: _SpoolWriter | None = None
            file_name: str | None = None
            events = iter_form(content_type, body.read(limit), content_length)
            async for event in events:
                if isinstance(event, Field):
                    add_field(fields, event.name, event.value)
                elif isinstance(event, FileStart):
                    if event.name != "file" or file_name is not None:
                        raise invalid("send one file part, named 'file'")
                    file_name = event.filename
                    if has_position(fields):
                        request = parse_chunk_request(self.job_id, fields, file_name, self.settings)
                        size = event.size_if_last if needs_size else None
                        if needs_size and size is None:
                            raise ChuteError(
                                Problem.FILE_PART_NOT_LAST, why="the request has no Content-Length"
                            )
                        stored = await self._store(stack, request, _file_bytes(events), size)
                    else:
                        # The seed's sample sends the file before the fields: keep the
                        # bytes aside until the fields say where they go, once the job is
                        # known to take them and the disk has room.
                        await self._run(
                            self._in_session, service.check_takes_data, self.user_id, self.job_id
                        )
                        spool = await self._run(self._open_spool)
                        stack.callback(spool.close)
                        spooled = _Pipeline(
                            self.settings.max_chunk_bytes,
                            ChuteError(
                                Problem.CHUNK_TOO_LARGE, limit=self.settings.max_chunk_bytes
                            ),
                            spool,
                            None,
                        )
                        await _pump(_file_bytes(events), spooled, self.executor)
            if file_name is None:
                raise invalid("the field file is missing")
            request = parse_chunk_request(self.job_id, fields, file_name, self.settings)
            if stored is None:
                assert spool is not None
                source = _read_file(spool.path, self.executor)
                stored = await self._store(stack, request, source, spooled.size)
            elif (request.index, request.total_chunks) != (
                stored.request.index,
                stored.request.total_chunks,
            ):
                raise invalid("fields after the file part contradict those before it")
            return await self._finish(stored, request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(
        self,
        stack: contextlib.AsyncExitStack,
        request: ChunkRequest,
        source: AsyncIterator[Buffer],
        size: int | None,
    ) -> _Stored:
        """Steps 1 to 3: open the upload, lock the part, stream its bytes.

        `size` is the chunk's exact size when known before its bytes; they must match it."""
        storage = self.rt.storage
        refusal = await self._refusal(request, size)
        if refusal is not None:
            if size is not None:
                await _read_to_its_end(source, size)
            raise refusal
        with _storage_errors():
            plan = await self._run(
                self._in_session, service.open_upload, storage, self.settings, self.user_id,
                request,
            )  # fmt: skip
        if size is not None and size > plan.limit:
            raise plan.over_limit
        writer: PartWriter | None = None
        lease: Lease | None = None
        if not plan.complete:
            lock = self.rt.part_locks.lock_part(
                plan.storage_id, request.index, self.settings.chunk_lock_timeout
            )
            try:
                held = await self._run(lock.__enter__)
            except TimeoutError:
                raise ChuteError(Problem.CHUNK_BUSY, index=request.index) from None
            except FileNotFoundError:
                raise ChuteError(Problem.UPLOAD_REPLACED) from None
            stack.push_async_exit(lambda *exc: self._run(lock.__exit__, None, None, None))
            if isinstance(held, Lease):
                lease = held
            if not await self._run(self._in_session, service.is_recorded, request):
                writer = await self._open_writer(plan, request, size)
                stack.callback(writer.abort)
        check = CsvStartCheck(plan.params) if request.index == 0 and writer is not None else None
        pipeline = _Pipeline(plan.limit, plan.over_limit, writer, check, size)
        pipeline.held_open = partial(
            self._in_session, service.held_open, self.job_id, plan.storage_id
        )
        await _pump(source, pipeline, self.executor)
        return _Stored(request, plan, pipeline, writer, lease)

    async def _refusal(self, request: ChunkRequest, size: int | None) -> ChuteError | None:
        """Why a chunk is refused on its size alone, known before its bytes, or None.

        The storage's part rules (S3) are about bytes sent to the store: a chunk already
        recorded sends none, so it is answered as on any storage (a re-send, or 409)."""
        if size == 0:
            return ChuteError(Problem.EMPTY_CHUNK)
        try:
            service.check_part_rules(self.rt.storage, request, size)
        except ChuteError as refused:
            if refused.problem is Problem.CHUNK_TOO_SMALL and await self._run(
                self._in_session, service.is_recorded_for, self.user_id, request
            ):
                return None
            return refused
        return None

    def _open_spool(self) -> _SpoolWriter:
        directory = self.settings.data_dir / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        self._check_room(shutil.disk_usage(directory).free, self._most(None, None))
        return _SpoolWriter(directory)

    def _most(self, limit: int | None, size: int | None) -> int:
        """The most bytes the chunk can have: its exact size when known, else the least of
        its limit and the request's Content-Length (a 16 MiB chunk needs no room for the
        256 MiB limit)."""
        if size is not None:
            return size
        bounds = (limit or self.settings.max_chunk_bytes, self.declared)
        return min(n for n in bounds if n is not None)

    def _check_room(self, free: int | None, most: int) -> None:
        """507 unless `most` bytes more leave CHUTE_MIN_FREE_BYTES free."""
        if free is not None and free - most < self.settings.min_free_bytes:
            raise ChuteError(Problem.STORAGE_FULL)

    async def _open_writer(
        self, plan: service.ChunkPlan, request: ChunkRequest, size: int | None
    ) -> PartWriter:
        storage = self.rt.storage
        most = self._most(plan.limit, size)
        self._check_room(await self._run(storage.free_bytes), most)
        with _storage_errors():
            return await self._run(
                storage.open_part, plan.storage_id, request.index, plan.offset, most, size
            )

    async def _finish(self, stored: _Stored, request: ChunkRequest) -> dict[str, Any]:
        """Steps 4 to 6: whole-chunk checks, durability, the record, the queue."""
        pipeline = stored.pipeline
        if pipeline.size == 0:
            raise ChuteError(Problem.EMPTY_CHUNK)
        if pipeline.expected is not None and pipeline.size != pipeline.expected:
            raise pipeline.wrong_size()
        sha = pipeline.hash.hexdigest()
        if request.sha256 is not None and request.sha256 != sha:
            raise ChuteError(Problem.CHECKSUM_MISMATCH, actual=sha, expected=request.sha256)
        if pipeline.check is not None:
            pipeline.check.finish(whole_file=request.total_chunks == 1)
        if stored.writer is not None:
            if stored.lease is not None and stored.lease.lost.is_set():
                # Another request took the part over meanwhile: its bytes must win whole.
                raise ChuteError(Problem.CHUNK_BUSY, index=request.index)
            await self._run(_commit, stored.writer, pipeline.held_open)
        recorded = await self._run(
            self._in_session, service.record_chunk, self.settings, self.user_id, request,
            stored.plan.storage_id, pipeline.size, sha, stored.plan.offset is not None,
        )  # fmt: skip
        if recorded.completed_now:
            try:
                await self._run(self.rt.queue.enqueue, self.job_id)
            except Exception:
                # The job is queued in the database; the sweeper enqueues it again.
                log.exception("could not enqueue job %s", self.job_id)
        return {
            "message": MESSAGE_COMPLETE if recorded.upload_complete else MESSAGE_STORED,
            "data_chunk_index": request.index,
            "job_id": self.job_id,
            "complete": recorded.upload_complete,
            "duplicate": recorded.duplicate,
            "expires_at": recorded.expires_at,
        }
