"""The tus 1.0 front door's rules, over the upload core (DESIGN §6).

A tus upload is the upload of one job, created with its length. A PATCH appends at the
upload's offset: its body is cut into parts at multiples of the upload's part size, and
each part is recorded as soon as it is durably stored, so `Upload-Offset` only ever names
recorded bytes, and a connection lost mid-PATCH costs at most the part it was in.

With `Upload-Checksum` the PATCH is all or nothing instead: its parts are stored as they
stream, but recorded together only once the checksum over the whole body matches, so a
mismatch (460) keeps none of its bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from chute.errors import ChuteError, Problem
from chute.names import name_problem
from chute.runtime import Runtime
from chute.storage import Part
from chute.upload import core, tus_records
from chute.upload.csvcheck import CsvStartCheck, HeadKeeper
from chute.upload.stream import Body, Buffer, PartPath, Pipeline, UploadSlots
from chute.upload.tus_records import TusState, record, still_at

log = logging.getLogger(__name__)

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination,concatenation"
PATCH_TYPE = "application/offset+octet-stream"
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
}
MAX_METADATA = 4096


def bad_header(what: str) -> ChuteError:
    return ChuteError(Problem.TUS_BAD_HEADER, what=what)


def parse_count(name: str, raw: str | None) -> int:
    """A header holding a whole number of bytes (Upload-Length, Upload-Offset)."""
    if raw is None:
        raise bad_header(f"the {name} header is missing")
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise bad_header(f"{name} must be a whole number of bytes")
    return int(raw)


def parse_metadata(raw: str | None) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs, values UTF-8 text."""
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_METADATA:
        raise bad_header(f"Upload-Metadata is longer than {MAX_METADATA} characters")
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not key or not key.isascii() or not key.isprintable() or key in pairs:
            raise bad_header("Upload-Metadata has a key that is empty, not ASCII, or repeated")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise bad_header(
                f"Upload-Metadata's value of {key!r} is not base64 of UTF-8 text"
            ) from None
        pairs[key] = value
    return pairs


def parse_checksum(raw: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: `algorithm base64(digest)`, of an algorithm this server knows."""
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise bad_header(f"Upload-Checksum's algorithm must be one of {', '.join(CHECKSUMS)}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise bad_header("Upload-Checksum's digest is not base64") from None
    if len(digest) != CHECKSUMS[algorithm]().digest_size:
        raise bad_header(f"Upload-Checksum's digest is not a {algorithm} digest")
    return algorithm, digest


@dataclass(frozen=True)
class NewJob:
    """What the metadata says of the job to create when it names none."""

    name: str
    kind: str
    params: Any


def job_of(metadata: dict[str, str]) -> int | NewJob:
    """The job a creation names (`job_id`), or the one it asks for (`name`, `kind`,
    `params` as JSON). Uppy sends the file's name as `name`: a job named after its file."""
    raw_id = metadata.get("job_id")
    if raw_id is not None:
        if not (raw_id.isascii() and raw_id.isdigit()) or len(raw_id) > 19:
            raise bad_header("the metadata's job_id must be a job's number")
        return int(raw_id)
    name = metadata.get("name") or metadata.get("filename")
    if not name:
        raise bad_header("Upload-Metadata must name a job: job_id, or name for a new job")
    if (problem := name_problem(name)) is not None:
        raise bad_header(f"the metadata's name {problem}")
    try:
        params = json.loads(metadata.get("params") or "{}")
    except ValueError:
        raise bad_header("the metadata's params must be JSON") from None
    return NewJob(name, metadata.get("kind") or "profile", params)


def file_name_of(metadata: dict[str, str]) -> str | None:
    name = metadata.get("filename") or metadata.get("name")
    if name and name_problem(name) is not None:
        raise bad_header("the metadata's filename is not a valid file name")
    return name or None


class _Slices:
    """The body's pieces, taken a given number of bytes at a time."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source.__aiter__()
        self._left = memoryview(b"")
        self.ended = False

    async def at_end(self) -> bool:
        while not self._left and not self.ended:
            try:
                self._left = memoryview(await anext(self._source))
            except StopAsyncIteration:
                self.ended = True
        return not self._left

    async def take(self, n: int) -> AsyncIterator[Buffer]:
        while n > 0 and not await self.at_end():
            head, self._left = self._left[:n], self._left[n:]
            n -= len(head)
            yield head


@dataclass(frozen=True)
class _At:
    """Where a part of a PATCH goes: its index, its offset, where it must stop, and
    whether the PATCH announced its length (then the part's size is known up front)."""

    index: int
    offset: int
    boundary: int
    sized: bool


class _Checksum:
    """A PATCH's Upload-Checksum, judged over its whole body. A sha256 of a PATCH that is
    one part is that part's own hash, which is computed anyway: no second pass then."""

    def __init__(self, algorithm: str, expected: bytes, *, one_part: bool) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self.digest = None if one_part and algorithm == "sha256" else CHECKSUMS[algorithm]()

    def matches(self, parts: list[core.NewPart]) -> bool:
        if self.digest is None:
            # One part at most: its hash, or that of nothing for an empty body.
            actual = bytes.fromhex(parts[0].sha256) if parts else hashlib.sha256().digest()
            return actual == self.expected
        return bool(self.digest.digest() == self.expected)


class TusPatch:
    """One PATCH (or a creation's body): its bytes appended to the upload part by part."""

    def __init__(self, rt: Runtime, executor: Executor, slots: UploadSlots, user_id: int) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.path = PartPath(rt, executor)
        self.slots = slots
        self.user_id = user_id
        # A partial upload's first bytes, once its first part is stored (recorded with it).
        self.head: bytes | None = None

    def _in_session(self, fn: Callable[[Session], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with self.rt.sessions() as session:
                return fn(session)

        return run

    async def append(
        self,
        state: TusState,
        content_length: int | None,
        checksum: tuple[str, bytes] | None,
        body: Body,
    ) -> int:
        """Stream the body at `state.offset`; return the upload's offset after it."""
        left = state.length - state.offset
        if content_length is not None and content_length > left:
            raise ChuteError(Problem.PATCH_TOO_LARGE, left=left)
        try:
            with self.slots.take(self.user_id):
                return await self._append(state, content_length, checksum, body, left)
        except ChuteError:
            await body.drain(min(left, self.settings.max_chunk_bytes))
            raise

    async def _append(
        self,
        state: TusState,
        content_length: int | None,
        checksum: tuple[str, bytes] | None,
        body: Body,
        left: int,
    ) -> int:
        slices = _Slices(body.read(left))
        end = state.length if content_length is None else state.offset + content_length
        first_boundary = (state.offset // state.part_size + 1) * state.part_size
        judge = None if checksum is None else _Checksum(*checksum, one_part=first_boundary >= end)
        pending: list[core.NewPart] = []
        offset, index = state.offset, state.next_index
        async with contextlib.AsyncExitStack() as whole:
            while offset < end and not await slices.at_end():
                boundary = min((offset // state.part_size + 1) * state.part_size, end)
                # With a checksum every part's lock is held until the whole body is judged.
                async with contextlib.AsyncExitStack() as one:
                    at = _At(index, offset, boundary, sized=content_length is not None)
                    part = await self._store_part(whole if judge else one, state, at, slices, judge)
                    if judge is None:
                        await self._record(state, [part])
                    else:
                        pending.append(part)
                offset += part.size
                index += 1
            if judge is not None:
                if not judge.matches(pending):
                    raise ChuteError(Problem.CHECKSUM_MISMATCH_TUS, algorithm=judge.algorithm)
                if pending:
                    await self._record(state, pending)
        return offset

    async def _store_part(
        self,
        stack: contextlib.AsyncExitStack,
        state: TusState,
        at: _At,
        slices: _Slices,
        judge: _Checksum | None,
    ) -> core.NewPart:
        """Lock, write and commit the part `at` says (durable after)."""
        index, offset, boundary, sized = at.index, at.offset, at.boundary, at.sized
        held = await self.path.lock(stack, state.storage_id, index)
        # What the database holds: with a checksum, nothing of this PATCH until its end.
        recorded = state.offset if judge is not None else offset
        await self.path.in_thread(
            self._in_session(
                lambda s: still_at(s, self.user_id, state.tus_id, state.storage_id, recorded)
            )
        )
        most = boundary - offset
        part = Part(
            index=index,
            offset=offset,
            most=most,
            size=most if sized else None,
            last=boundary == state.length if sized else None,
            part_size=state.part_size,
        )
        writer = await self.path.open_writer(stack, state.storage_id, part)

        def held_open() -> bool:
            with self.rt.sessions() as session:
                return tus_records.held_open(session, state.tus_id, state.storage_id)

        # The file's first bytes are checked as CSV. A partial upload's, of no job yet and
        # of no known place in the file, are kept, and checked if a final upload puts
        # that partial first.
        check = CsvStartCheck(state.params) if offset == 0 and state.params is not None else None
        keeper = HeadKeeper() if offset == 0 and state.params is None else None
        pipeline = Pipeline(
            most, ChuteError(Problem.PATCH_TOO_LARGE, left=most), writer, check or keeper,
            held_open,
        )  # fmt: skip
        if judge is not None and judge.digest is not None:
            pipeline.also.append(judge.digest)
        await self.path.pump(slices.take(most), pipeline)
        if check is not None:
            check.finish(whole_file=offset + pipeline.size == state.length)
        if keeper is not None:
            self.head = bytes(keeper.head)
        await self.path.commit(writer, held, held_open, index)
        return core.NewPart(index, pipeline.size, pipeline.hash.hexdigest(), offset)

    async def _record(self, state: TusState, parts: list[core.NewPart]) -> None:
        completed = await self.path.in_thread(
            self._in_session(
                lambda s: record(
                    s, self.user_id, state.tus_id, state.storage_id, parts, head=self.head
                )
            )
        )
        for part in parts:
            log.info(
                "upload %s: part %s recorded (%s bytes)", state.tus_id, part.index, part.size,
                extra={"user_id": self.user_id, "job_id": state.job_id, "chunk": part.index,
                       "bytes": part.size, "protocol": "tus"},
            )  # fmt: skip
        if completed and state.job_id is not None:
            await self.path.enqueue(state.job_id)
