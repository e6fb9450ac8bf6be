"""S3-compatible storage: an upload is one S3 multipart upload, a chunk is one part.

The multipart upload is created on the file's final key. `begin(key)` is given the key
that `complete` will use (the upload core knows it when it opens an upload: a job's
input key is a pure function of the job id), so CompleteMultipartUpload puts the file in
place. The other way, a staging key and a server-side copy at the end, would copy tens of
GB once more (and CopyObject stops at 5 GiB). The storage id is `"<UploadId> <key>"`: S3
wants bucket, key and UploadId on every call, and with both in the id any API process can
send any part and any worker can complete the upload. UploadIds contain no space.

S3 places parts by number. A part whose offset is known, in an upload whose part size is
known, belongs to S3 part `offset // part_size + 1` (for a chunk that is `index + 1`); a
part kept aside until its offset is known is S3 part `index + 1`. A tus PATCH may end
anywhere: a part that does not reach the end of its S3 part (nor the file's end) is kept
as a small "tail" object beside the upload, and the part that completes that S3 part
sends the tails' bytes first, then its own. So every byte is in exactly one S3 part;
only the bytes of tails are written twice (at most one part size per S3 part).

S3's rules on parts are this module's business, not the caller's: at most 10,000 parts,
every part but the last at least 5 MiB, and a part's size sent before its bytes. A part
that breaks them is refused with `PartRefused`, which says why in words for the client;
`part_size` gives uploads a part size that fits them.

A part streams from the request to the store: `PartWriter.write` puts each piece in a
bounded pipe, which a thread running UploadPart reads as its body. The part's size comes
from `Part.size`, and the bytes must match it. The pipe holds
back the part's last byte until `commit`: a store keeps a part only once all its
ContentLength bytes arrived, so a request that fails its checks after the last byte came
in (checksum, CSV start, size) aborts by cutting the body short, and nothing of it is kept.

A concatenation (`concatenate`) is a multipart upload too, made of the sources' objects
by UploadPartCopy: the store copies, no byte passes through Chute. A source over 5 GiB
(S3's largest part) is copied in ranges. Only when a source other than the last is under
the least part size, which S3 refuses as a part, do the sources stream through Chute:
read with GetObject and sent as parts of `stream_part_size`, in bounded memory.

No `PartLocking`: two uploads of the same part number replace each other whole in S3.
Some stores (SeaweedFS) keep every upload of a part number and, at completion, take the
newest of those whose ETag they are given; `complete` gives every ETag of the right size
listed for a part, so the newest upload wins there too, as in S3.

So two requests must not send the same part at once: the upload path takes the part's
lease in the database first (`chute.upload.partlease`), which holds across API processes
and machines; the second request waits, finds the chunk recorded, and is answered as a
re-send (or 409 if its bytes differ), without uploading anything.

Client settings, and why:
- No retries on UploadPart: its body is a one-way stream; the client sends the chunk again.
  Other calls are retried by botocore (standard mode).
- Payload signing off: SigV4 over plain http would hash the body before sending it, which
  a stream cannot be read twice for. Integrity rests on TLS (https endpoints) and on the
  SHA-256 that the upload path checks on the bytes it streams.
- Checksums only when an operation requires them: S3-compatible stores differ in their
  support of the newer default checksums (CRC trailers).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chute.config import DEFAULT_CHUNK_SIZE, GiB, MiB, Settings
from chute.storage.base import (
    Part,
    PartRefused,
    PartWriter,
    PlacedPart,
    Storage,
    StorageError,
    StorageFull,
    check_sources,
    file_size,
)

MAX_PARTS = 10_000
# S3's largest part: a larger source is copied into a concatenation in ranges.
MAX_PART_BYTES = 5 * GiB
# UploadPartCopy calls of one concatenation at once: each waits on the store's copy.
_COPY_THREADS = 4
# Bytes of one part held in memory between the request and the store.
PIPE_BYTES = 4 * MiB
_DELETE_BATCH = 1000
_LIST_PARTS_PAGE = 1000

_NO_SUCH_UPLOAD = {"NoSuchUpload"}
_NO_SUCH_KEY = {"NoSuchKey", "404", "NotFound"}
_FULL = {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull"}
_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _storage_error(what: str, exc: BaseException) -> Exception:
    """Map a botocore error into the storage contract's exceptions, in plain words."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        bucket = exc.response.get("Error", {}).get("BucketName")
        where = f" (bucket {bucket!r})" if bucket else ""
        if code in _NO_SUCH_UPLOAD:
            # Whether the upload was discarded or the store lost it (or this API stores in
            # another bucket than the one that began it), only the database can tell: the
            # upload path asks it (chute.upload.core.held_open).
            return FileNotFoundError(
                f"{what}: the S3 store answered NoSuchUpload{where}: the multipart upload "
                "does not exist there"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"{what}: the S3 store answered NoSuchBucket{where}: the bucket does not "
                "exist; check CHUTE_STORAGE_URL"
            )
        if code in _FULL:
            return StorageFull(f"{what}: {code}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIALS or status == 403:
            # AccessDenied is also what a store answers for a bucket that does not exist
            # (S3 without ListBucket permission, SeaweedFS for a user who may not create it).
            return StorageError(
                f"{what}: the S3 store refused the credentials ({code or status}){where}; check "
                "CHUTE_S3_ACCESS_KEY_ID, CHUTE_S3_SECRET_ACCESS_KEY, the bucket named in "
                "CHUTE_STORAGE_URL and its permissions"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(f"{what}: the S3 store answered {code or status}: {message}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: the S3 store could not be reached: {exc}")
    return StorageError(f"{what}: {exc}")


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _storage_error(what, exc) from exc


def _cut(part: Part) -> bool:
    """Whether the upload's part size and the part's offset are known: S3 parts then follow
    the multiples of the part size, and a part that does not reach its multiple (nor the
    file's end) waits as a tail until the rest of its S3 part comes."""
    return part.part_size is not None and part.offset is not None


def _only(part: Part) -> bool:
    """The part is the whole file."""
    return part.offset == 0 and part.last is True


def _number(index: int, offset: int | None, part_size: int | None) -> int:
    """The S3 part number of a part: its cut's, or its index's."""
    if part_size is not None and offset is not None:
        return offset // part_size + 1
    return index + 1


def _s3_parts(parts: Sequence[PlacedPart]) -> list[tuple[int, int]]:
    """(S3 part number, size) of the file's S3 parts, from its recorded parts in order."""
    sizes: dict[int, int] = {}
    for part in parts:
        number = _number(part.index, part.offset, part.part_size)
        sizes[number] = sizes.get(number, 0) + part.size
    return sorted(sizes.items())


def copy_plan(
    sizes: Sequence[int],
    min_part_size: int,
    max_part_size: int = MAX_PART_BYTES,
    max_parts: int = MAX_PARTS,
) -> list[tuple[int, int, int]] | None:
    """The S3 parts of a concatenation of sources of `sizes` bytes by server-side copy:
    (source index, first byte, size) of each, in file order. A source over `max_part_size`
    is cut into equal ranges, each then at least half of it (above any least part size).
    None when the store would refuse the parts: a part but the last under `min_part_size`
    (a source short of it that is not the last with bytes), or more than `max_parts`.
    Empty sources give no part; no sources with bytes give no part either."""
    plan: list[tuple[int, int, int]] = []
    for index, size in enumerate(sizes):
        pieces = -(-size // max_part_size)
        bounds = [size * k // pieces for k in range(pieces + 1)] if pieces else []
        plan += [(index, start, end - start) for start, end in pairwise(bounds)]
    if len(plan) > max_parts or any(size < min_part_size for _, _, size in plan[:-1]):
        return None
    return plan


def _size_differs(announced: int, came: str) -> PartRefused:
    return PartRefused(
        f"this server's storage needs each part's size before its bytes: the part was "
        f"announced with {announced} bytes, but {came} came"
    )


class _Aborted(Exception):
    """Raised in the sending thread: the part is cut short, and the store keeps nothing."""


class _PartPipe:
    """One part's bytes, from the writer to the thread that sends them (its UploadPart
    body). Holds at most PIPE_BYTES, and the last byte until `commit`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self._sent = 0
        self._pieces: deque[memoryview] = deque()
        self._buffered = 0
        self._committed = False
        self._aborted = False
        self._reader_gone = False
        self._cond = threading.Condition()

    def put(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue a piece; False if the sending thread has stopped (its error says why)."""
        view = memoryview(data).cast("B")
        if not view.readonly:
            view = memoryview(bytes(view))  # the caller may reuse a mutable buffer
        with self._cond:
            if self.written + len(view) > self.size:
                raise _size_differs(self.size, "more")
            while self._buffered >= PIPE_BYTES and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                return False
            self._pieces.append(view)
            self._buffered += len(view)
            self.written += len(view)
            self._cond.notify_all()
            return True

    def commit(self) -> None:
        with self._cond:
            self._committed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def reader_gone(self) -> None:
        with self._cond:
            self._reader_gone = True
            self._cond.notify_all()

    def read(self, amt: int | None = -1) -> bytes | memoryview:
        """The body's next bytes, as botocore's HTTP connection asks for them."""
        with self._cond:
            while True:
                if self._aborted:
                    raise _Aborted("the part was aborted")
                if self._sent == self.size:
                    return b""
                # Until commit, the last byte stays here: the store cannot finish the part.
                allowed = (self.size if self._committed else self.size - 1) - self._sent
                if self._pieces and allowed > 0:
                    head = self._pieces[0]
                    n = min(len(head), allowed, amt if amt is not None and amt > 0 else len(head))
                    if n == len(head):
                        self._pieces.popleft()
                    else:
                        self._pieces[0] = head[n:]
                    self._buffered -= n
                    self._sent += n
                    self._cond.notify_all()
                    return head[:n]
                self._cond.wait()

    def readable(self) -> bool:
        return True


class _S3PartWriter:
    """Streams one part: a thread runs UploadPart (or, for a tail, PutObject) with the pipe
    as its body."""

    def __init__(self, client: Any, operation: str, what: str, size: int, **args: Any):
        self._pipe = _PartPipe(size)
        self._what = what
        self._error: BaseException | None = None
        self._finished = False
        self._call = getattr(client, operation)
        # The least size the store keeps this part at (not its last part), judged at commit.
        self.least = 0
        self.too_small: Callable[[int], PartRefused] = PartRefused
        self._args = {**args, "ContentLength": size, "Body": self._pipe}
        self._thread = threading.Thread(target=self._send, name="chute-s3-part", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            self._call(**self._args)
        except BaseException as exc:
            self._error = exc
        finally:
            self._pipe.reader_gone()

    def _failure(self) -> Exception:
        assert self._error is not None
        return _storage_error(self._what, self._error)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pipe.put(data):
            self._thread.join()
            raise self._failure()

    def commit(self) -> None:
        if self._pipe.written != self._pipe.size:
            self.abort()
            raise _size_differs(self._pipe.size, str(self._pipe.written))
        if self._pipe.size < self.least:
            self.abort()
            raise self.too_small(self._pipe.size)
        self._pipe.commit()
        self._thread.join()
        self._finished = True
        if self._error is not None:
            raise self._failure()

    def abort(self) -> None:
        # No join: abort may be called on the event loop. The thread ends at its next read,
        # and without the last byte the store cannot have finished the part anyway.
        if not self._finished:
            self._pipe.abort()


class S3Storage(Storage):
    max_parts = MAX_PARTS
    # The part size of a concatenation streamed through Chute, as `part_size` raises it:
    # the server's default chunk size, which partial tus uploads use too.
    stream_part_size = DEFAULT_CHUNK_SIZE
    # The largest part a concatenation copies: S3's.
    max_part_bytes = MAX_PART_BYTES

    def __init__(self, client: Any, part_client: Any, bucket: str, prefix: str, min_part_size: int):
        self.client = client
        # UploadPart's own client: its bodies are streams, which cannot be sent twice.
        self.part_client = part_client
        self.bucket = bucket
        self.prefix = prefix
        self.min_part_size = min_part_size

    def check_ready(self) -> int | None:
        with _mapped("the bucket"):
            self.client.head_bucket(Bucket=self.bucket)
        return None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        parsed = urlparse(settings.resolved_storage_url)
        if not parsed.netloc:
            raise ValueError("CHUTE_STORAGE_URL must name a bucket: s3://bucket/prefix")
        prefix = parsed.path.strip("/")
        secret = settings.s3_secret_access_key.get_secret_value()

        def client(attempts: int) -> Any:
            config = Config(
                connect_timeout=10,
                read_timeout=120,
                retries={"mode": "standard", "total_max_attempts": attempts},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"payload_signing_enabled": False},
                max_pool_connections=64,
            )
            return boto3.session.Session().client(
                "s3",
                endpoint_url=settings.s3_endpoint_url or None,
                aws_access_key_id=settings.s3_access_key_id or None,
                aws_secret_access_key=secret or None,
                region_name=settings.s3_region,
                config=config,
            )

        return cls(
            client=client(attempts=4),
            part_client=client(attempts=1),
            bucket=parsed.netloc,
            prefix=f"{prefix}/" if prefix else "",
            min_part_size=settings.s3_min_part_size,
        )

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError("bad key")
        return self.prefix + key

    @staticmethod
    def _split(upload_id: str) -> tuple[str, str]:
        s3_id, _, key = upload_id.partition(" ")
        if not s3_id or not key:
            raise ValueError("bad upload id")
        return s3_id, key

    def begin(self, key: str) -> str:
        with _mapped(f"start of an upload to {key!r}"):
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return f"{answer['UploadId']} {key}"

    def part_size(self, wanted: int, length: int) -> int:
        return max(wanted, self.min_part_size, -(-length // MAX_PARTS))

    def _check(self, part: Part) -> int:
        """The part's size, once the store's rules on parts that its opening can judge are
        met (PartRefused); its size against the least part size is judged at commit, once
        its bytes came: a request that ends otherwise is answered for what it is."""
        if part.size is None:
            raise PartRefused(
                "this server's storage needs each part's size before its bytes: "
                "send a Content-Length"
            )
        if _number(part.index, part.offset, part.part_size) > MAX_PARTS:
            raise PartRefused(f"this server's storage takes at most {MAX_PARTS} parts per file")
        if not _only(part) and part.part_size is not None and part.part_size < self.min_part_size:
            raise self._too_small(part.part_size)
        return part.size

    def check_part(self, part: Part) -> None:
        self._check(part)

    def _too_small(self, size: int) -> PartRefused:
        return PartRefused(
            f"parts of {size} bytes are too small for this server's storage: every "
            f"part but the last must have at least {self.min_part_size} bytes"
        )

    def _least(self, part: Part) -> int:
        """The least bytes the part may have: a part that is not the last and does not
        wait as a tail (whole S3 parts only) must have the store's least part size."""
        return self.min_part_size if part.last is False and not _cut(part) else 0

    def open_part(self, upload_id: str, part: Part) -> PartWriter:
        size = self._check(part)
        s3_id, key = self._split(upload_id)
        if not _cut(part):
            return self._part_writer(s3_id, key, part.index + 1, size, least=self._least(part))
        assert part.offset is not None and part.part_size is not None
        start = part.offset - part.offset % part.part_size
        end = part.offset + size
        if end - start < part.part_size and part.last is not True:
            # Not the whole of its S3 part yet: kept as a tail object until the rest comes.
            return _S3PartWriter(
                self.part_client, "put_object", f"tail at {part.offset} of {key!r}", size,
                Bucket=self.bucket, Key=self._tail_key(s3_id, part.offset),
            )  # fmt: skip
        tails = self._tail_chain(s3_id, start, part.offset)
        writer = self._part_writer(s3_id, key, start // part.part_size + 1, end - start)
        try:
            for tail_key in tails:
                with _mapped(f"read of a tail of {key!r}"):
                    body = self.client.get_object(Bucket=self.bucket, Key=tail_key)["Body"]
                while block := body.read(PIPE_BYTES):
                    writer.write(block)
        except BaseException:
            writer.abort()
            raise
        return writer

    def _part_writer(
        self, s3_id: str, key: str, number: int, size: int, least: int = 0
    ) -> _S3PartWriter:
        writer = _S3PartWriter(
            self.part_client, "upload_part", f"upload of part {number} to {self._key(key)!r}", size,
            Bucket=self.bucket, Key=self._key(key), UploadId=s3_id, PartNumber=number,
        )  # fmt: skip
        writer.least = least
        writer.too_small = self._too_small
        return writer

    def _tails(self, s3_id: str) -> str:
        """Where an upload's tails wait: beside the upload, under the storage's prefix."""
        return f"{self.prefix}.chute-tails/{s3_id}/"

    def _tail_key(self, s3_id: str, offset: int) -> str:
        return f"{self._tails(s3_id)}{offset:020d}"

    def _listed_tails(self, s3_id: str) -> dict[int, tuple[str, int]]:
        """The upload's tails by offset: (key, size)."""
        found: dict[int, tuple[str, int]] = {}
        with _mapped("listing of tails"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._tails(s3_id)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    offset = int(item["Key"].rsplit("/", 1)[1])
                    found[offset] = (item["Key"], int(item["Size"]))
        return found

    def _tail_chain(self, s3_id: str, start: int, end: int) -> list[str]:
        """The tails that hold the bytes from `start` to `end`, in order."""
        if start == end:
            return []
        listed = self._listed_tails(s3_id)
        chain, at = [], start
        while at < end:
            if at not in listed:
                raise StorageError(f"the bytes from {at} to {end} are missing from the store")
            key, size = listed[at]
            chain.append(key)
            at += size
        if at != end:
            raise StorageError(f"the stored bytes before {end} do not end there")
        return chain

    def _drop_tails(self, s3_id: str) -> None:
        keys = [{"Key": key} for key, _ in self._listed_tails(s3_id).values()]
        for i in range(0, len(keys), _DELETE_BATCH):
            with _mapped("removal of tails"):
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": keys[i : i + _DELETE_BATCH], "Quiet": True},
                )

    def _parts(self, s3_id: str, key: str) -> dict[int, list[dict[str, Any]]]:
        """Every part the store lists, by number (some stores list a replaced part too)."""
        parts: dict[int, list[dict[str, Any]]] = {}
        marker = 0
        while True:
            page = self.client.list_parts(
                Bucket=self.bucket,
                Key=key,
                UploadId=s3_id,
                MaxParts=_LIST_PARTS_PAGE,
                PartNumberMarker=marker,
            )
            for part in page.get("Parts", []):
                parts.setdefault(int(part["PartNumber"]), []).append(part)
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NO_SUCH_KEY:
                return False
            raise
        return True

    def complete(self, upload_id: str, key: str, parts: Sequence[PlacedPart]) -> None:
        s3_id, begun_key = self._split(upload_id)
        if key != begun_key:
            raise ValueError(f"upload {upload_id!r} was begun for another key than {key!r}")
        full = self._key(key)
        what = f"completion of {key!r}"
        with _mapped(what):
            try:
                stored_parts = self._parts(s3_id, full)
            except ClientError as exc:
                if _code(exc) not in _NO_SUCH_UPLOAD:
                    raise
                if self._exists(full):
                    return  # completed before (perhaps by a worker that died right after)
                raise FileNotFoundError(
                    f"upload {upload_id} is neither pending nor complete"
                ) from None
            listed = []
            for number, size in _s3_parts(parts):
                # Only versions of the right size: a store may also list what a request cut
                # off short left behind (SeaweedFS: a 0-byte part).
                etags = [p["ETag"] for p in stored_parts.get(number, []) if p["Size"] == size]
                if not etags:
                    raise StorageError(
                        f"{what}: part {number} of {size} bytes is missing from the store"
                    )
                listed += [{"PartNumber": number, "ETag": etag} for etag in etags]
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=s3_id, MultipartUpload={"Parts": listed}
            )
            stored = self.client.head_object(Bucket=self.bucket, Key=full)["ContentLength"]
        size = file_size(parts)
        if stored != size:
            raise StorageError(f"{what}: the store assembled {stored} bytes, not {size}")
        self._drop_tails(s3_id)

    def concatenate(self, upload_id: str, key: str, sources: Sequence[str]) -> None:
        listed = check_sources(key, sources)
        s3_id, begun_key = self._split(upload_id)
        if key != begun_key:
            raise ValueError(f"upload {upload_id!r} was begun for another key than {key!r}")
        full = self._key(key)
        what = f"concatenation into {key!r}"
        with _mapped(what):
            try:
                self.client.list_parts(Bucket=self.bucket, Key=full, UploadId=s3_id, MaxParts=1)
            except ClientError as exc:
                if _code(exc) not in _NO_SUCH_UPLOAD:
                    raise
                if not self._exists(full):
                    raise FileNotFoundError(
                        f"upload {upload_id} is neither pending nor complete"
                    ) from None
                # Completed before: what a run that died after it may have left is the
                # removal of the sources.
                self._delete_keys([self._key(source) for source in listed], what)
                self._drop_tails(s3_id)
                return
            sizes = [self._size(source) for source in listed]
        plan = copy_plan(sizes, self.min_part_size, self.max_part_bytes)
        if plan:
            parts = self._copy_parts(s3_id, key, listed, sizes, plan)
        else:
            parts = self._stream_parts(s3_id, key, listed, sizes)
        self.complete(upload_id, key, parts)
        self._delete_keys([self._key(source) for source in listed], what)

    def _size(self, key: str) -> int:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _NO_SUCH_KEY:
                raise FileNotFoundError(f"{key!r} is not stored") from None
            raise
        return int(answer["ContentLength"])

    def _copy_parts(
        self,
        s3_id: str,
        key: str,
        sources: list[str],
        sizes: list[int],
        plan: list[tuple[int, int, int]],
    ) -> list[PlacedPart]:
        """Copy the planned ranges of the sources into the upload's parts, in the store;
        the parts as `complete` takes them (S3 part number: index + 1)."""
        full = self._key(key)
        # A source copied whole needs no range (and a store need not support ranges then).
        cut = {index for index, _, size in plan if size != sizes[index]}

        def copy(number: int, index: int, start: int, size: int) -> None:
            source = sources[index]
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": full,
                "UploadId": s3_id,
                "PartNumber": number,
                "CopySource": {"Bucket": self.bucket, "Key": self._key(source)},
            }
            if index in cut:
                args["CopySourceRange"] = f"bytes={start}-{start + size - 1}"
            with _mapped(f"copy of {source!r} into part {number} of {key!r}"):
                self.client.upload_part_copy(**args)

        pool = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="chute-s3-copy")
        try:
            futures = [pool.submit(copy, n, *piece) for n, piece in enumerate(plan, start=1)]
            for future in futures:
                future.result()
        finally:
            pool.shutdown(cancel_futures=True)
        parts, offset = [], 0
        for index, (_, _, size) in enumerate(plan):
            parts.append(PlacedPart(index, offset, size))
            offset += size
        return parts

    def _stream_parts(
        self, s3_id: str, key: str, sources: list[str], sizes: list[int]
    ) -> list[PlacedPart]:
        """Send the sources' bytes, read from the store, as parts of the stream part size
        (S3 takes no part under its least size but the last), one pipe at a time."""
        total = sum(sizes)
        part_size = self.part_size(self.stream_part_size, total)
        parts: list[PlacedPart] = []
        with contextlib.closing(self._blocks(sources)) as blocks:
            pending = memoryview(b"")
            # At least one part: a file of no bytes is one empty part.
            for index in range(max(1, -(-total // part_size))):
                offset = index * part_size
                size = min(part_size, total - offset)
                writer = self._part_writer(s3_id, key, index + 1, size)
                try:
                    need = size
                    while need:
                        if not pending:
                            block = next(blocks, None)
                            if block is None:
                                raise StorageError(
                                    f"concatenation into {key!r}: the sources ended before "
                                    f"their {total} bytes"
                                )
                            pending = memoryview(block)
                        n = min(need, len(pending))
                        writer.write(pending[:n])
                        pending, need = pending[n:], need - n
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
                parts.append(PlacedPart(index, offset, size, part_size=part_size))
        return parts

    def _blocks(self, sources: list[str]) -> Generator[bytes, None, None]:
        """The sources' bytes, read from the store in order, a MiB at most at a time (the
        part pipe holds a few of them: more would only take memory)."""
        for source in sources:
            with _mapped(f"read of {source!r}"):
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(source))["Body"]
            try:
                while True:
                    with _mapped(f"read of {source!r}"):
                        block = body.read(MiB)
                    if not block:
                        break
                    yield block
            finally:
                body.close()

    def _delete_keys(self, keys: list[str], what: str) -> None:
        """Delete objects by full key; those already gone are no error."""
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[i : i + _DELETE_BATCH]]
            with _mapped(what):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(
                    f"{what}: {len(answer['Errors'])} objects not deleted, first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )

    def abort(self, upload_id: str) -> None:
        s3_id, key = self._split(upload_id)
        self._drop_tails(s3_id)
        with _mapped(f"abort of the upload to {key!r}"):
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._key(key), UploadId=s3_id
                )
            except ClientError as exc:
                if _code(exc) not in _NO_SUCH_UPLOAD:
                    raise

    def open(self, key: str) -> BinaryIO:
        with _mapped(f"read of {key!r}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _code(exc) in _NO_SUCH_KEY:
                    raise FileNotFoundError(key) from None
                raise
        # botocore's StreamingBody: a readable stream of the answer, never read whole.
        return cast(BinaryIO, answer["Body"])

    def put_file(self, key: str, source: Path) -> None:
        transfer = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)
        with _mapped(f"store of {key!r}"):
            self.client.upload_file(str(source), self.bucket, self._key(key), Config=transfer)

    def delete(self, key: str) -> None:
        with _mapped(f"delete of {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        if not prefix.endswith("/") or not prefix.strip("/"):
            raise ValueError("a prefix names a folder below the root and ends with /")
        full = self._key(prefix.rstrip("/")) + "/"
        with _mapped(f"delete of {prefix!r}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": _DELETE_BATCH}
            )
            for page in pages:
                keys = [item["Key"] for item in page.get("Contents", [])]
                self._delete_keys(keys, f"delete of {prefix!r}")
