"""S3Storage beyond the shared contract, on a real S3-compatible server (SeaweedFS): S3's
rules on parts (refused with PartRefused, before any byte), the store's answers mapped
into the contract's errors, the last byte held back so a part cut off keeps nothing, and
parts streamed in bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest

from chute.config import MiB
from chute.storage import Part, PartRefused, PlacedPart, StorageError
from chute.storage.s3 import MAX_PARTS, S3Storage
from tests.conftest import storage_of
from tests.s3_support import SeaweedFS
from tests.storage.support import put, read

PART = 5 * MiB  # SeaweedFS enforces S3's minimum for every part but the last
KEY = "jobs/1/input.csv"


@pytest.fixture
def storage(s3_storage: S3Storage) -> S3Storage:
    return s3_storage


def parts_held(storage: S3Storage) -> list[tuple[str, int]]:
    """(key, part number) of every part holding bytes, of the storage's unfinished uploads.
    SeaweedFS may also list a 0-byte part for an UploadPart cut off before its first byte:
    it holds nothing, and completion and abort remove it."""
    s3, bucket = storage.client, storage.bucket
    found = []
    listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=storage.prefix)
    for upload in listed.get("Uploads", []):
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        found += [(upload["Key"], p["PartNumber"]) for p in parts.get("Parts", []) if p["Size"]]
    return found


def storage_for(seaweedfs: SeaweedFS, bucket: str, **settings: str) -> S3Storage:
    """A server's storage, opened from its settings (new clients: slower than `storage`)."""
    storage = storage_of({**seaweedfs.env(bucket, "chute"), **settings})
    assert isinstance(storage, S3Storage)
    return storage


def refusal(storage: S3Storage, part: Part) -> str:
    upload_id = storage.begin(KEY)
    try:
        with pytest.raises(PartRefused) as caught:
            storage.open_part(upload_id, part).abort()
    finally:
        storage.abort(upload_id)
    return str(caught.value)


def test_a_part_needs_its_size_before_its_bytes(storage: S3Storage) -> None:
    why = refusal(storage, Part(0, 0, most=PART, size=None, last=False, part_size=PART))
    assert "send a Content-Length" in why


def test_parts_too_small_are_refused_but_the_last(storage: S3Storage) -> None:
    assert storage.min_part_size == PART
    # An upload whose parts are too small, even its last part.
    why = refusal(storage, Part(2, 20, 10, 10, last=True, part_size=10))
    assert f"every part but the last must have at least {PART} bytes" in why
    # A part that is not the last, too small whatever the upload's part size.
    assert "parts of 10 bytes are too small" in refusal(
        storage, Part(1, None, 10, 10, last=False, part_size=PART)
    )
    # Taken: a file of one small part, the small last part of a file of big parts.
    upload_id = storage.begin(KEY)
    only = put(storage, upload_id, 0, b"id\n1\n", part_size=5, last=True)
    storage.complete(upload_id, KEY, [only])
    upload_id = storage.begin("jobs/2/input.csv")
    put(storage, upload_id, 2, b"tail\n", part_size=PART, last=True)
    storage.abort(upload_id)


def test_more_than_max_parts_are_refused(storage: S3Storage) -> None:
    assert storage.max_parts == MAX_PARTS == 10_000
    why = refusal(storage, Part(MAX_PARTS, MAX_PARTS * PART, 5, 5, last=True, part_size=PART))
    assert "at most 10000 parts" in why
    # The last one there may be is taken.
    upload_id = storage.begin(KEY)
    put(storage, upload_id, MAX_PARTS - 1, b"tail\n", part_size=PART, last=True)
    storage.abort(upload_id)


def test_part_size_fits_the_rules(storage: S3Storage) -> None:
    assert storage.part_size(MiB, 10 * MiB) == PART  # raised to the least part size
    assert storage.part_size(64 * MiB, 10 * MiB) == 64 * MiB
    huge = 100 * 1024 * 1024 * MiB
    assert storage.part_size(64 * MiB, huge) == -(-huge // MAX_PARTS)  # 10,000 parts at most


def test_the_bytes_must_match_the_announced_size(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    short = storage.open_part(upload_id, Part(0, 0, 100, 100, last=True))
    short.write(b"x" * 60)
    with pytest.raises(PartRefused, match="announced with 100 bytes, but 60 came"):
        short.commit()
    long = storage.open_part(upload_id, Part(0, 0, 100, 100, last=True))
    with pytest.raises(PartRefused, match="announced with 100 bytes, but more came"):
        long.write(b"y" * 101)
    long.abort()
    time.sleep(0.5)  # give the sending threads every chance to send what they may
    assert parts_held(storage) == []


def test_min_part_size_is_a_setting_the_store_may_not_share(
    seaweedfs: SeaweedFS, s3_shared: S3Storage
) -> None:
    lowered = storage_for(seaweedfs, s3_shared.bucket, CHUTE_S3_MIN_PART_SIZE="100")
    assert lowered.min_part_size == 100
    assert lowered.part_size(1, 1000) == 100
    upload_id = lowered.begin(KEY)
    parts = [
        put(lowered, upload_id, 0, b"a" * 100, part_size=100, last=False),
        put(lowered, upload_id, 1, b"b" * 10, part_size=100, last=True),
    ]
    # SeaweedFS, like S3, takes a small part but refuses it at the end.
    with pytest.raises(StorageError, match="EntityTooSmall"):
        lowered.complete(upload_id, KEY, parts)
    lowered.abort(upload_id)


def test_complete_refuses_a_missing_part(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    first = put(storage, upload_id, 0, os.urandom(PART), part_size=PART, last=False)
    tail = PlacedPart(1, PART, 5)
    with pytest.raises(StorageError, match="part 2 of 5 bytes is missing"):
        storage.complete(upload_id, KEY, [first, tail])
    # Nothing was consumed: the missing part can still come.
    put(storage, upload_id, 1, b"tail\n", part_size=PART, last=True)
    storage.complete(upload_id, KEY, [first, tail])
    assert read(storage, KEY)[-5:] == b"tail\n"


def test_complete_is_for_the_key_begun(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    part = put(storage, upload_id, 0, b"id\n", part_size=3, last=True)
    with pytest.raises(ValueError, match="another key"):
        storage.complete(upload_id, "jobs/2/input.csv", [part])
    storage.abort(upload_id)


def test_a_part_aborted_after_its_last_byte_is_not_stored(storage: S3Storage) -> None:
    # What the upload path does when a checksum or CSV check fails once every byte came:
    # the last byte was held back, so the store cannot have finished the part.
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, Part(0, 0, PART, PART, last=False, part_size=PART))
    writer.write(os.urandom(PART))
    time.sleep(0.5)  # give the sending thread every chance to send what it may
    writer.abort()
    writer.abort()  # safe twice
    time.sleep(0.5)
    assert parts_held(storage) == []


def test_writes_wait_for_the_store_in_bounded_memory(storage: S3Storage) -> None:
    # A part larger than the pipe: the writer must block while the thread sends, not buffer.
    data = os.urandom(3 * PART)
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, Part(0, 0, len(data), len(data), last=True))
    for start in range(0, len(data), MiB):
        writer.write(data[start : start + MiB])
    writer.commit()
    storage.complete(upload_id, KEY, [PlacedPart(0, 0, len(data))])
    assert hashlib.sha256(read(storage, KEY)).digest() == hashlib.sha256(data).digest()


def test_open_streams_the_object(storage: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "out.parquet"
    source.write_bytes(os.urandom(3 * MiB))
    storage.put_file("jobs/2/out/data.parquet", source)
    with storage.open("jobs/2/out/data.parquet") as f:
        # The answer's stream, read as it comes, never the whole object in memory.
        assert not isinstance(f, bytes | bytearray | io.BytesIO)
        assert len(f.read(MiB)) == MiB


def test_delete_prefix_deletes_in_batches(storage: S3Storage) -> None:
    s3, bucket, prefix = storage.client, storage.bucket, storage.prefix
    # More than one delete batch (1000 keys) under the folder, and neighbours outside it.
    keys = [f"{prefix}jobs/3/out/{i:04d}" for i in range(1003)]

    def put_some(some: list[str]) -> None:
        for key in some:
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    threads = [threading.Thread(target=put_some, args=(keys[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # An object named like the folder, and the same folder outside the storage's prefix.
    neighbours = [f"{prefix}jobs/3", f"{prefix}jobs/30/input.csv", f"other-{prefix}jobs/3/x"]
    for key in neighbours:
        s3.put_object(Bucket=bucket, Key=key, Body=b"y")
    storage.delete_prefix("jobs/3/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    left = {o["Key"] for page in pages for o in page.get("Contents", [])}
    assert not any(key.startswith(f"{prefix}jobs/3/") for key in left)
    assert set(neighbours) <= left


def test_keys_stay_below_the_prefix(storage: S3Storage) -> None:
    for bad in ("../x", "/abs", "a/../../b", "a/../b", ""):
        with pytest.raises(ValueError):
            storage.begin(bad)


def test_wrong_credentials_give_a_clear_error(seaweedfs: SeaweedFS, s3_shared: S3Storage) -> None:
    wrong = storage_for(seaweedfs, s3_shared.bucket, CHUTE_S3_SECRET_ACCESS_KEY="not-the-secret")
    with pytest.raises(StorageError, match="refused the credentials") as caught:
        wrong.begin(KEY)
    assert "not-the-secret" not in str(caught.value)


def test_an_unreachable_store_gives_a_clear_error(
    seaweedfs: SeaweedFS, s3_shared: S3Storage
) -> None:
    gone = storage_for(seaweedfs, s3_shared.bucket, CHUTE_S3_ENDPOINT_URL="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="could not be reached"):
        gone.begin(KEY)


def test_the_stores_answer_is_named_in_the_error(storage: S3Storage) -> None:
    """What the server's log shows when a part cannot be stored: the store's error code."""
    upload_id = storage.begin(KEY)
    missing = S3Storage(storage.client, storage.part_client, "chute-no-such-bucket", "chute/", PART)
    with pytest.raises(StorageError) as caught:
        put(missing, upload_id, 0, b"id,name\n1,a\n", part_size=PART, last=True)
    assert str(caught.value) == (
        f"upload of part 1 to 'chute/{KEY}': the S3 store answered NoSuchBucket "
        "(bucket 'chute-no-such-bucket'): the bucket does not exist; check CHUTE_STORAGE_URL"
    )
    # A discarded upload: the storage contract's FileNotFoundError, which the upload path
    # checks against the database before it tells the client "discarded".
    storage.abort(upload_id)
    with pytest.raises(FileNotFoundError, match="the S3 store answered NoSuchUpload"):
        put(storage, upload_id, 0, b"id,name\n1,a\n", part_size=PART, last=True)
