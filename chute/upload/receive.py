"""The chunk endpoint's front door: one upload-data request, from its multipart form to a
recorded chunk, over the upload core's byte path (`chute.upload.stream`).

Order of a request, and why:
1. fields checked, upload opened (a short transaction);
2. the part's lock taken, so no other request writes the same index meanwhile;
3. bytes hashed and written (or only hashed, for an index already recorded);
4. checks that need every byte (size, checksum, CSV start), then the commit (durable);
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
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chute.errors import ChuteError, Problem, invalid
from chute.runtime import Runtime
from chute.storage import Part, PartWriter
from chute.storage.base import HeldPart
from chute.upload import chunks, core, quota
from chute.upload.csvcheck import CsvStartCheck
from chute.upload.form import Field, FileData, FileEnd, FileStart, iter_form, malformed
from chute.upload.protocol import ChunkRequest, add_field, has_position, parse_chunk_request
from chute.upload.stream import (
    BATCH,
    Body,
    Buffer,
    PartPath,
    Pipeline,
    UploadSlots,
    storage_errors,
)

log = logging.getLogger(__name__)

# Room for the form fields and part headers around a chunk's bytes.
FORM_OVERHEAD = 64 * 1024

MESSAGE_STORED = "Data chunk uploaded successfully"
MESSAGE_COMPLETE = "Data uploaded successfully and job started"


async def _file_bytes(events: AsyncIterator[Any], announced: int | None) -> AsyncIterator[Buffer]:
    """The file part's bytes. Past the size its request announced (the form's Content-Length
    less the rest of the form), none is passed on: the storage was told that size, and only
    a form that never closes can have more, which the parser then says (malformed)."""
    seen = 0
    async for event in events:
        if isinstance(event, FileData):
            data = event.data
            if announced is not None and seen + len(data) > announced:
                data = data[: max(announced - seen, 0)]
            seen += len(event.data)
            if data:
                yield data
        elif isinstance(event, FileEnd):
            if announced is not None and seen > announced:
                raise malformed("the file part is longer than the request's Content-Length")
            return
    raise malformed("the file part has no end")


def _shape(request: ChunkRequest, size: int | None) -> Part:
    """The chunk as its request describes it, before the upload is opened."""
    cs = request.chunk_size
    return Part(
        index=request.index,
        offset=None if cs is None else request.index * cs,
        most=size or 0,
        size=size,
        last=request.is_last,
        part_size=cs,
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
    plan: chunks.ChunkPlan
    pipeline: Pipeline
    writer: PartWriter | None
    held: HeldPart | None
    check: CsvStartCheck | None
    reservation: quota.Reservation | None


class ChunkReceiver:
    """One upload-data request. Use `receive`; it returns the answer's JSON."""

    def __init__(
        self, rt: Runtime, executor: Executor, slots: UploadSlots, user_id: int, job_id: int
    ) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.path = PartPath(rt, executor)
        self.executor = executor
        self.slots = slots
        self.user_id = user_id
        self.job_id = job_id
        # The request's Content-Length: no chunk in it is larger.
        self.declared: int | None = None

    def _held_open(self, storage_id: str) -> bool:
        with self.rt.sessions() as session:
            return core.held_open(session, self.job_id, storage_id)

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
        async with contextlib.AsyncExitStack() as stack:
            stored: _Stored | None = None
            spool: _SpoolWriter | None = None
            spooled: Pipeline | None = None
            spool_room: quota.Reservation | None = None
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
                        size = event.announced_size
                        source = _file_bytes(events, size)
                        stored = await self._store(stack, request, source, size)
                    else:
                        # The seed's sample sends the file before the fields: keep the
                        # bytes aside until the fields say where they go, once the job is
                        # known to take them, and the disk and the user's quota to have room.
                        complete = await self.path.in_thread(self._check_takes_data)
                        # A complete upload takes only re-sends, which add nothing.
                        most = 0 if complete else self._most(None, None)
                        spool_room = await self.path.in_thread(
                            functools.partial(self._reserve, quota.Flight(self._key, most))
                        )
                        stack.callback(spool_room.release)
                        spool = await self.path.in_thread(self._open_spool)
                        stack.callback(spool.close)
                        spooled = Pipeline(
                            self.settings.max_chunk_bytes,
                            ChuteError(
                                Problem.CHUNK_TOO_LARGE, limit=self.settings.max_chunk_bytes
                            ),
                            spool,
                        )
                        await self.path.pump(_file_bytes(events, None), spooled)
            if file_name is None:
                raise invalid("the field file is missing")
            request = parse_chunk_request(self.job_id, fields, file_name, self.settings)
            if stored is None:
                assert spool is not None and spooled is not None and spool_room is not None
                source = _read_file(spool.path, self.executor)
                spool_room.release()  # the chunk's own reservation follows
                stored = await self._store(stack, request, source, spooled.size)
            elif (request.index, request.total_chunks) != (
                stored.request.index,
                stored.request.total_chunks,
            ):
                raise invalid("fields after the file part contradict those before it")
            return await self._finish(stored, request)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_takes_data(self) -> bool:
        with self.rt.sessions() as session:
            return chunks.check_takes_data(session, self.user_id, self.job_id)

    def _open(self, request: ChunkRequest) -> chunks.ChunkPlan:
        with self.rt.sessions() as session:
            return chunks.open_upload(
                session, self.rt.storage, self.settings, self.user_id, request
            )

    @property
    def _key(self) -> str:
        return quota.job_key(self.job_id)

    def _reserve(
        self, flight: quota.Flight, recorded: tuple[int, int] | None = None
    ) -> quota.Reservation:
        return self.rt.quota_ledger.reserve(
            self.rt.sessions, self.settings, self.user_id, flight, recorded
        )

    def _is_recorded(self, request: ChunkRequest) -> bool:
        with self.rt.sessions() as session:
            return chunks.is_recorded(session, request)

    async def _store(
        self,
        stack: contextlib.AsyncExitStack,
        request: ChunkRequest,
        source: AsyncIterator[Buffer],
        size: int | None,
    ) -> _Stored:
        """Steps 1 to 3: open the upload, lock the part, stream its bytes.

        `size` is the chunk's size as its request announced it, when it did."""
        if size == 0:
            raise ChuteError(Problem.EMPTY_CHUNK)
        chunks.check_part_count(self.rt.storage, request)
        with storage_errors():
            # What the storage refuses from the request alone binds nothing of the upload.
            self.rt.storage.check_part(_shape(request, size))
            plan = await self.path.in_thread(lambda: self._open(request))
        if size is not None and size > plan.limit:
            raise plan.over_limit
        writer: PartWriter | None = None
        held: HeldPart | None = None
        reservation: quota.Reservation | None = None
        if not plan.complete:
            # Before any byte is stored: the user's quota takes the chunk, and the whole
            # file when the request or the upload says how large it is.
            floor = quota.chunk_floor(request.file_size, plan.chunk_size, request.total_chunks)
            flight = quota.Flight(self._key, self._most(plan.limit, size), floor)
            reservation = await self.path.in_thread(
                lambda: self._reserve(flight, (self.job_id, request.index))
            )
            stack.callback(reservation.release)
            held = await self.path.lock(stack, plan.storage_id, request.index)
            if not await self.path.in_thread(lambda: self._is_recorded(request)):
                part = Part(
                    index=request.index,
                    offset=plan.offset,
                    most=self._most(plan.limit, size),
                    size=size,
                    last=request.is_last,
                    part_size=plan.chunk_size,
                )
                writer = await self.path.open_writer(stack, plan.storage_id, part)
        check = CsvStartCheck(plan.params) if request.index == 0 and writer is not None else None
        pipeline = Pipeline(
            plan.limit, plan.over_limit, writer, check, lambda: self._held_open(plan.storage_id)
        )
        await self.path.pump(source, pipeline)
        return _Stored(request, plan, pipeline, writer, held, check, reservation)

    def _open_spool(self) -> _SpoolWriter:
        directory = self.settings.data_dir / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        self.path.check_room(shutil.disk_usage(directory).free, self._most(None, None))
        return _SpoolWriter(directory)

    def _most(self, limit: int | None, size: int | None) -> int:
        """The most bytes the chunk can have: its announced size when known, else the least
        of its limit and the request's Content-Length (a 16 MiB chunk needs no room for the
        256 MiB limit)."""
        if size is not None:
            return size
        bounds = (limit or self.settings.max_chunk_bytes, self.declared)
        return min(n for n in bounds if n is not None)

    async def _finish(self, stored: _Stored, request: ChunkRequest) -> dict[str, Any]:
        """Steps 4 to 6: whole-chunk checks, durability, the record, the queue."""
        pipeline = stored.pipeline
        if pipeline.size == 0:
            raise ChuteError(Problem.EMPTY_CHUNK)
        sha = pipeline.hash.hexdigest()
        if request.sha256 is not None and request.sha256 != sha:
            raise ChuteError(Problem.CHECKSUM_MISMATCH, actual=sha, expected=request.sha256)
        if stored.check is not None:
            stored.check.finish(whole_file=request.total_chunks == 1)
        storage_id = stored.plan.storage_id
        if stored.writer is not None:
            assert stored.held is not None
            await self.path.commit(
                stored.writer, stored.held, lambda: self._held_open(storage_id), request.index
            )
        chunk = chunks.StoredChunk(storage_id, pipeline.size, sha, stored.plan.offset is not None)

        def record() -> chunks.Recorded:
            with self.rt.sessions() as session:
                return chunks.record_chunk(session, self.settings, self.user_id, request, chunk)

        reservation = stored.reservation
        recorded = await self.path.in_thread(
            record if reservation is None else lambda: reservation.settle(record)
        )
        log.info(
            "job %s: chunk %s recorded (%s bytes)%s", self.job_id, request.index, pipeline.size,
            ", the upload is complete" if recorded.completed_now else "",
            extra={"user_id": self.user_id, "job_id": self.job_id, "chunk": request.index,
                   "bytes": pipeline.size, "protocol": "chunks"},
        )  # fmt: skip
        if recorded.completed_now:
            await self.path.enqueue(self.job_id)
        return {
            "message": MESSAGE_COMPLETE if recorded.upload_complete else MESSAGE_STORED,
            "data_chunk_index": request.index,
            "job_id": self.job_id,
            "complete": recorded.upload_complete,
            "duplicate": recorded.duplicate,
            "expires_at": recorded.expires_at,
        }
