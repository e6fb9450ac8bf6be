"""Sending a file as a job's chunks: only those the server lacks, several at once.

How a chunk is sent without ever being held in memory: its region of the file is
hashed first (1 MiB at a time, into one reused buffer): the server wants
`chunk_sha256` in the form fields, which come before the bytes. Then the region is
sent in a request whose length is computed up front, so it goes out with
Content-Length: by sendfile to a plain http:// server (`zerocopy.py`), the bytes
going from the page cache to the socket without a copy in this process; otherwise
(TLS, a proxy) read again in 256 KiB blocks and streamed through httpx. So memory
stays at one block per chunk in flight at most, whatever the chunk or file size.

Resuming: the server lists the chunks it holds, with their sizes and SHA-256s. Each
held chunk of the file is hashed and compared; a match is skipped, a mismatch stops
the upload (the job holds another file). Every other chunk is sent.

Threads: one hashes the chunks in index order, ahead of the senders, so that a
sender that finishes a chunk finds the next one hashed; `parallel` senders each
take the next hashed chunk and stream it on a connection of their own.

Chunk 0 is checked here first, with the server's own check (`chute.upload.csvcheck`,
the job's encoding and header settings), while it is hashed: a file the server would
refuse is reported before a byte is sent. Chunk 0 still goes first, and the other
senders start beside it. Should the local check be impossible (the job's settings
unknown), chunk 0 goes alone and the others wait for the server's answer to it, so
a wrong file is refused after one chunk, not after one per sender.

Retries: a chunk that fails on the network, stalls (no byte moved and no answer for
the client's stall timeout, `stall.py`), or gets 5xx, 408, 423, 429 or 507, is sent
again on a new connection after a backoff with jitter, and at least the server's
Retry-After (`retry.py`); it is idempotent on the server. Any other 4xx stops every
chunk in flight and raises `ApiError` with the server's detail.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from chute.client.errors import ApiError, ChuteClientError, UploadError, detail_of
from chute.client.models import HeldChunk, Job, ServerConfig, UploadStatus
from chute.client.multipart import ChunkForm
from chute.client.progress import ProgressCallback, Tracker
from chute.client.retry import Aborted, GaveUp, RetryPolicy
from chute.client.stall import socket_options
from chute.client.throttle import Throttle
from chute.client.zerocopy import SENDFILE_BLOCK, ChunkConnection, FileRegion
from chute.errors import ChuteError
from chute.upload.csvcheck import CsvStartCheck

# Bytes read and handed to the socket at a time. Each sender holds one such block;
# small blocks keep that, and what the allocator keeps per thread, low with many in
# flight (32 in flight: 8 MiB), at a few thousand loop turns per GiB.
SEND_BLOCK = 256 * 1024
# The hasher reads into one buffer of its own, reused: nothing is allocated per block.
HASH_BLOCK = 1024 * 1024


class UploadClient(Protocol):
    """What an upload needs of a client: `chute.client.api.Client` is one.

    A protocol, so that this module depends on these few members, not on `Client`.
    """

    http: httpx.Client  # its base URL, authorization header and timeouts; chunks posted on it
    retry: RetryPolicy
    stall_timeout: float

    def upload_status(self, job_id: int) -> UploadStatus: ...

    def config(self) -> ServerConfig: ...

    def job(self, job_id: int) -> Job: ...

    def zero_copy_address(self) -> tuple[str, int] | None: ...

    def retrying(self, what: str, failure: Exception, wait: float) -> None:
        """Hears of a failed try that will be tried again after `wait` seconds."""


@dataclass(frozen=True)
class UploadSummary:
    job_id: int
    file_size: int
    chunk_size: int
    total_chunks: int
    held_chunks: int  # on the server before this run, checked and not sent again
    sent_chunks: int  # sent and confirmed in this run
    sent_bytes: int  # chunk bytes of the chunks sent in this run
    retries: int  # chunk requests that had to be sent again
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.sent_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Piece:
    index: int
    offset: int
    size: int


def plan(file_size: int, chunk_size: int) -> list[Piece]:
    return [
        Piece(index, offset, min(chunk_size, file_size - offset))
        for index, offset in enumerate(range(0, file_size, chunk_size))
    ]


def choose_chunk_size(
    requested: int | None, status: UploadStatus, config: ServerConfig, file_size: int
) -> int:
    """The chunk size for this file: the one the server fixed for the upload, if any,
    else the one asked for, else the server's; checked against the server's limits."""
    size = status.chunk_size or requested or config.chunk_size
    if size < 1:
        raise UploadError("the chunk size must be at least 1 byte")
    if size > config.max_chunk_bytes:
        raise UploadError(
            f"a chunk size of {size} bytes is over the server's limit of "
            f"{config.max_chunk_bytes} bytes"
        )
    if file_size > config.max_file_bytes:
        raise UploadError(
            f"the file has {file_size} bytes, over the server's limit of "
            f"{config.max_file_bytes} bytes"
        )
    total = -(-file_size // size)
    if total > config.max_total_chunks:
        raise UploadError(
            f"{total} chunks of {size} bytes is more than the server's limit of "
            f"{config.max_total_chunks} chunks; use a larger chunk size"
        )
    return size


@dataclass(frozen=True)
class Plan:
    """The file cut into chunks, and what the server held of them when the run began."""

    path: Path
    file_size: int
    chunk_size: int
    pieces: tuple[Piece, ...]
    held: dict[int, HeldChunk]

    @property
    def total_chunks(self) -> int:
        return len(self.pieces)


def _stat(path: Path) -> os.stat_result:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise UploadError(f"no such file: {path}") from None
    except OSError as exc:
        raise UploadError(f"cannot read {path}: {exc.strerror}") from None
    if not path.is_file():
        raise UploadError(f"not a regular file: {path}")
    return stat


def _check_against(status: UploadStatus, pieces: tuple[Piece, ...], size: int) -> None:
    """A job whose upload was begun with another file is refused before any byte."""
    other = (
        f"job {status.job_id} holds the start of another upload "
        f"({status.total_chunks} chunks of {status.chunk_size} bytes"
    )
    if status.total_chunks is not None and status.total_chunks != len(pieces):
        raise UploadError(f"{other}); this file makes {len(pieces)} chunks")
    if status.file_size is not None and status.file_size != size:
        raise UploadError(f"{other}, {status.file_size} bytes); this file has {size} bytes")
    for index, held in status.chunks.items():
        if index >= len(pieces) or held.size != pieces[index].size:
            raise UploadError(f"{other}): chunk {index} differs in size")


def upload_file(
    client: UploadClient,
    job_id: int,
    path: Path,
    *,
    chunk_size: int | None = None,
    parallel: int | None = None,
    on_progress: ProgressCallback | None = None,
    limit_rate: int | None = None,
) -> UploadSummary:
    """Send what the server lacks of `path` to job `job_id`; see the module docstring."""
    started = time.monotonic()
    before = _stat(path)
    if before.st_size == 0:
        raise UploadError(f"{path} is empty; there is nothing to upload")
    status = client.upload_status(job_id)
    config = client.config()
    size = before.st_size
    chosen = choose_chunk_size(chunk_size, status, config, size)
    pieces = tuple(plan(size, chosen))
    _check_against(status, pieces, size)
    file_plan = Plan(path, size, chosen, pieces, status.chunks)
    tracker = Tracker(job_id, size, len(pieces), on_progress)
    for index in status.chunks:
        tracker.held(pieces[index].size)
    if status.state == "complete":
        # The server holds every chunk and has started the job. Their sizes were
        # checked above; hashing the whole file again would only delay the answer.
        return _summary(job_id, file_plan, [], 0, started)
    # The job's settings, for checking chunk 0 as the server will (unless it holds it).
    params = None if 0 in status.chunks else client.job(job_id).raw.get("params")
    tracker.start()
    sender = Sender(
        client,
        job_id,
        file_plan,
        tracker,
        Throttle(limit_rate) if limit_rate else None,
        params if isinstance(params, dict) else None,
    )
    sender.run(max(1, min(parallel or config.parallel_chunks, len(pieces))))
    after = _stat(path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise UploadError(f"{path} changed while it was being sent; send it again")
    if not sender.completed and client.upload_status(job_id).state != "complete":
        raise UploadError(f"job {job_id}: the server does not hold the whole file")
    return _summary(job_id, file_plan, sender.sent, sender.retries, started)


def _summary(
    job_id: int, file_plan: Plan, sent: list[Piece], retries: int, started: float
) -> UploadSummary:
    return UploadSummary(
        job_id=job_id,
        file_size=file_plan.file_size,
        chunk_size=file_plan.chunk_size,
        total_chunks=file_plan.total_chunks,
        held_chunks=len(file_plan.held),
        sent_chunks=len(sent),
        sent_bytes=sum(piece.size for piece in sent),
        retries=retries,
        seconds=time.monotonic() - started,
    )


class Sender:
    """The threads of one run: each takes the next chunk, hashes it, compares or sends it."""

    def __init__(
        self,
        client: UploadClient,
        job_id: int,
        file_plan: Plan,
        tracker: Tracker,
        throttle: Throttle | None,
        check_params: dict[str, Any] | None = None,
    ) -> None:
        """`check_params`: the job's params, to check chunk 0 with before it is sent."""
        self.client = client
        self.job_id = job_id
        self.plan = file_plan
        self.tracker = tracker
        self.throttle = throttle
        self.stop = threading.Event()
        # Set once chunk 0 is known to be the start of a CSV file the server takes:
        # checked here, taken by the server now, or held from before. Other chunks
        # wait for it.
        self.chunk0_ok = threading.Event()
        if 0 in file_plan.held:
            self.chunk0_ok.set()
        self.check_params = check_params
        self.completed = False  # a chunk got the completing answer
        self.sent: list[Piece] = []
        self.retries = 0
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._hash_buffer = bytearray(HASH_BLOCK)  # the hasher thread's alone

    def run(self, parallel: int) -> None:
        """Send with `parallel` threads; raise the first error any thread met."""
        # At most `parallel` hashed chunks wait for a sender: enough that a sender
        # never waits for a hash, and few enough that they are still in the page cache.
        ready: queue.Queue[tuple[Piece, str] | None] = queue.Queue(maxsize=parallel)
        fd = os.open(self.plan.path, os.O_RDONLY)
        try:
            threads = [threading.Thread(target=self._hasher, args=(fd, ready, parallel))]
            threads += [
                threading.Thread(target=self._sender, args=(fd, ready)) for _ in range(parallel)
            ]
            for thread in threads:
                thread.daemon = True
                thread.start()
            try:
                for thread in threads:
                    # A timed join, so Ctrl-C reaches this thread while chunks are in flight.
                    while thread.is_alive():
                        thread.join(0.2)
            except BaseException:
                self.stop.set()
                for thread in threads:
                    thread.join()
                raise
        finally:
            os.close(fd)
        if self._errors:
            raise self._errors[0]

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self.stop.set()

    def _hasher(self, fd: int, ready: queue.Queue[tuple[Piece, str] | None], senders: int) -> None:
        """Hash every chunk in index order: compare those the server holds, queue the rest."""
        try:
            for piece in self.plan.pieces:
                sha256 = self._hash(fd, piece)
                held = self.plan.held.get(piece.index)
                if held is None:
                    self._put(ready, (piece, sha256))
                elif held.sha256 != sha256:
                    raise UploadError(
                        f"job {self.job_id} holds other bytes for chunk {piece.index}: "
                        "it was begun with another file"
                    )
            for _ in range(senders):
                self._put(ready, None)
        except Aborted:
            pass
        except BaseException as exc:
            self._failed(exc)

    def _put(
        self, ready: queue.Queue[tuple[Piece, str] | None], item: tuple[Piece, str] | None
    ) -> None:
        while True:
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():
                    raise Aborted from None

    def _sender(self, fd: int, ready: queue.Queue[tuple[Piece, str] | None]) -> None:
        # With sendfile where it can be used (zerocopy.py): one connection per sender.
        address = self.client.zero_copy_address()
        timeout = self.client.http.timeout
        stall = self.client.stall_timeout
        connection = (
            ChunkConnection(
                *address,
                connect=timeout.connect or 10.0,
                write=stall,
                read=timeout.read or 300.0,
                options=socket_options(stall),
            )
            if address
            else None
        )
        try:
            while True:
                try:
                    item = ready.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if item is None or self.stop.is_set():
                    return
                piece, sha256 = item
                if piece.index != 0:
                    while not self.chunk0_ok.wait(0.1):
                        if self.stop.is_set():
                            return
                self._send(fd, piece, sha256, connection)
                with self._lock:
                    self.sent.append(piece)
        except Aborted:
            pass
        except BaseException as exc:
            self._failed(exc)
        finally:
            if connection is not None:
                connection.close()

    def _read(self, fd: int, piece: Piece) -> Iterator[bytes]:
        block_size = min(self.throttle.block_size, SEND_BLOCK) if self.throttle else SEND_BLOCK
        offset, end = piece.offset, piece.offset + piece.size
        while offset < end:
            if self.stop.is_set():
                raise Aborted
            block = os.pread(fd, min(block_size, end - offset), offset)
            if not block:
                raise UploadError(f"{self.plan.path} became shorter while it was being sent")
            offset += len(block)
            yield block

    def _hash(self, fd: int, piece: Piece) -> str:
        check = None
        if piece.index == 0 and self.check_params is not None:
            check = CsvStartCheck(self.check_params)
        digest = hashlib.sha256()
        buffer = memoryview(self._hash_buffer)
        offset, end = piece.offset, piece.offset + piece.size
        while offset < end:
            if self.stop.is_set():
                raise Aborted
            n = os.preadv(fd, [buffer[: min(HASH_BLOCK, end - offset)]], offset)
            if n == 0:
                raise UploadError(f"{self.plan.path} became shorter while it was being sent")
            digest.update(buffer[:n])
            if check is not None:
                self._check(check.feed, self._hash_buffer[:n])
            offset += n
        if check is not None:
            self._check(check.finish, self.plan.total_chunks == 1)
            self.chunk0_ok.set()
        return digest.hexdigest()

    def _check(self, step: Callable[[Any], None], argument: Any) -> None:
        try:
            step(argument)
        except ChuteError as exc:
            raise UploadError(
                f"{self.plan.path} is not a CSV file the server takes: {exc.detail}"
            ) from None

    def _send(self, fd: int, piece: Piece, sha256: str, connection: ChunkConnection | None) -> None:
        def attempt() -> httpx.Response:
            streamed = [0]
            try:
                response = self._post(fd, piece, sha256, streamed, connection)
            except BaseException:
                self.tracker.rewound(streamed[0])
                raise
            if response.status_code != 200:
                self.tracker.rewound(streamed[0])
            return response

        def retrying(failure: Exception, wait: float) -> None:
            with self._lock:
                self.retries += 1
            self.client.retrying(f"chunk {piece.index}", failure, wait)

        try:
            response = self.client.retry.run(attempt, on_retry=retrying, stop=self.stop)
        except GaveUp as exc:
            raise ChuteClientError(
                f"chunk {piece.index} could not be sent after {exc.tries} tries: {exc.failure}"
            ) from None
        if response.status_code != 200:
            raise ApiError(response.status_code, detail_of(response))
        self._confirmed(response.json())

    def _confirmed(self, answer: dict[str, Any]) -> None:
        if answer.get("complete") is True:
            self.completed = True
        self.chunk0_ok.set()
        self.tracker.confirmed()

    def _post(
        self,
        fd: int,
        piece: Piece,
        sha256: str,
        streamed: list[int],
        connection: ChunkConnection | None,
    ) -> httpx.Response:
        fields = {
            "chunk_index": str(piece.index),
            "total_chunks": str(self.plan.total_chunks),
            "chunk_size": str(self.plan.chunk_size),
            "file_size": str(self.plan.file_size),
            "chunk_sha256": sha256,
        }
        form = ChunkForm(fields, self.plan.path.name, piece.size)
        target = f"/api/job/{self.job_id}/upload-data"
        headers = {"Content-Type": form.content_type, "Content-Length": str(form.length)}
        if connection is not None:
            return self._post_zero_copy(connection, target, form, fd, piece, streamed)

        def body() -> Iterator[bytes]:
            yield form.head
            for block in self._read(fd, piece):
                if self.throttle is not None:
                    self.throttle.take(len(block))
                yield block
                streamed[0] += len(block)
                self.tracker.streamed(len(block))
            yield form.tail

        return self.client.http.post(target, content=body(), headers=headers)

    def _post_zero_copy(
        self,
        connection: ChunkConnection,
        target: str,
        form: ChunkForm,
        fd: int,
        piece: Piece,
        streamed: list[int],
    ) -> httpx.Response:
        """The same request as `_post`'s, its chunk bytes sent by sendfile."""

        def before_block(size: int) -> None:
            if self.stop.is_set():
                raise Aborted
            if self.throttle is not None:
                self.throttle.take(size)

        def after_block(size: int) -> None:
            streamed[0] += size
            self.tracker.streamed(size)

        headers = {
            "Content-Type": form.content_type,
            **{k: v for k, v in self.client.http.headers.items() if k.lower() == "authorization"},
        }
        return connection.post(
            target,
            headers,
            form.head,
            FileRegion(fd, piece.offset, piece.size),
            form.tail,
            block_size=self.throttle.block_size if self.throttle else SENDFILE_BLOCK,
            before_block=before_block,
            after_block=after_block,
        )
