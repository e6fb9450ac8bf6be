"""S3Storage on a real S3-compatible server (SeaweedFS): parts by number, completion,
aborts, streams, and the rules S3 sets on parts."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest

from chute.config import MiB
from chute.errors import ChuteError, Problem
from chute.storage import StorageError
from chute.storage.s3 import S3Storage
from chute.upload.protocol import ChunkRequest
from chute.upload.service import check_part_rules
from tests.conftest import storage_of
from tests.s3_support import SeaweedFS

PART = 5 * MiB  # SeaweedFS enforces S3's minimum for every part but the last
KEY = "jobs/1/input.csv"


def storage_for(seaweedfs: SeaweedFS, bucket: str, prefix: str = "", **extra: str) -> S3Storage:
    storage = storage_of({**seaweedfs.env(bucket, prefix), **extra})
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture
def storage(seaweedfs: SeaweedFS, s3_bucket: str) -> S3Storage:
    return storage_for(seaweedfs, s3_bucket, "chute")


def put(storage: S3Storage, upload_id: str, index: int, data: bytes) -> None:
    writer = storage.open_part(upload_id, index, None, len(data), len(data))
    for start in range(0, len(data), 256 * 1024):  # several writes per part
        writer.write(data[start : start + 256 * 1024])
    writer.commit()
    writer.abort()  # after commit, as the receiver's exit does: a no-op


def read(storage: S3Storage, key: str) -> bytes:
    with storage.open(key) as f:
        return f.read()


def parts_of(seaweedfs: SeaweedFS, bucket: str) -> list[tuple[str, int]]:
    return seaweedfs.stored_parts(bucket)


def test_parts_out_of_order_assemble_the_file(storage: S3Storage) -> None:
    data = os.urandom(3 * PART + 321)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    upload_id = storage.begin(KEY)
    for index in (3, 0, 2, 1):
        put(storage, upload_id, index, parts[index])
    storage.complete(upload_id, KEY, len(data), PART, [])
    assert read(storage, KEY) == data


def test_a_part_sent_again_replaces_its_bytes(
    storage: S3Storage, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    first, second, last = os.urandom(PART), os.urandom(PART), b"tail\n"
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, first)
    put(storage, upload_id, 1, last)
    put(storage, upload_id, 0, second)
    # SeaweedFS keeps both uploads of part 1 until completion; the newest must win.
    storage.complete(upload_id, KEY, PART + 5, PART, [])
    assert read(storage, KEY) == second + last


def test_complete_is_idempotent(storage: S3Storage) -> None:
    data = os.urandom(PART + 7)
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, data[:PART])
    put(storage, upload_id, 1, data[PART:])
    storage.complete(upload_id, KEY, len(data), PART, [])
    # A worker that runs the completion again (after a crash, say) finds it done.
    storage.complete(upload_id, KEY, len(data), PART, [])
    assert read(storage, KEY) == data


def test_complete_of_an_unknown_upload_fails(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    storage.abort(upload_id)
    with pytest.raises(FileNotFoundError):
        storage.complete(upload_id, KEY, 1, 1, [])


def test_complete_refuses_a_missing_part(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, os.urandom(PART))
    with pytest.raises(StorageError, match="part 2"):
        storage.complete(upload_id, KEY, PART + 5, PART, [])
    # Nothing was consumed: the missing part can still come.
    put(storage, upload_id, 1, b"tail\n")
    storage.complete(upload_id, KEY, PART + 5, PART, [])


def test_abort_leaves_nothing(storage: S3Storage, seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, os.urandom(PART))
    put(storage, upload_id, 2, b"last")
    assert len(parts_of(seaweedfs, s3_bucket)) == 2
    storage.abort(upload_id)
    storage.abort(upload_id)  # idempotent
    assert parts_of(seaweedfs, s3_bucket) == []
    assert seaweedfs.keys(s3_bucket) == []
    # A late request for the aborted upload fails instead of bringing a part back.
    writer = storage.open_part(upload_id, 1, None, 4, 4)
    with pytest.raises(FileNotFoundError):
        writer.write(b"late")
        writer.commit()
    assert parts_of(seaweedfs, s3_bucket) == []


def test_abort_after_complete_keeps_the_file(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, b"id\n1\n")
    storage.complete(upload_id, KEY, 5, 5, [])
    storage.abort(upload_id)
    assert read(storage, KEY) == b"id\n1\n"


def test_a_part_aborted_after_its_last_byte_is_not_stored(
    storage: S3Storage, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    # What the receiver does when a checksum or CSV check fails once every byte came.
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, 0, None, PART, PART)
    writer.write(os.urandom(PART))
    time.sleep(0.5)  # give the sending thread every chance to send what it may
    writer.abort()
    writer.abort()  # safe twice
    time.sleep(0.5)
    assert parts_of(seaweedfs, s3_bucket) == []


def test_a_size_mismatch_aborts_the_part(
    storage: S3Storage, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    upload_id = storage.begin(KEY)
    short = storage.open_part(upload_id, 0, None, 100, 100)
    short.write(b"x" * 60)
    with pytest.raises(ValueError, match="60 bytes written, 100 declared"):
        short.commit()
    long = storage.open_part(upload_id, 1, None, 100, 100)
    with pytest.raises(ValueError, match="more bytes than the 100 declared"):
        long.write(b"y" * 101)
    long.abort()
    time.sleep(0.5)
    assert parts_of(seaweedfs, s3_bucket) == []


def test_a_part_needs_its_size(storage: S3Storage) -> None:
    upload_id = storage.begin(KEY)
    with pytest.raises(ValueError, match="size"):
        storage.open_part(upload_id, 0, 0, 10)


def test_writes_wait_for_the_store_in_bounded_memory(storage: S3Storage) -> None:
    # A part larger than the pipe: the writer must block while the thread sends, not buffer.
    data = os.urandom(3 * PART)
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, 0, None, len(data), len(data))
    for start in range(0, len(data), MiB):
        writer.write(data[start : start + MiB])
    writer.commit()
    storage.complete(upload_id, KEY, len(data), len(data), [])
    assert hashlib.sha256(read(storage, KEY)).digest() == hashlib.sha256(data).digest()


def test_open_streams_the_object(storage: S3Storage, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    source = tmp_path / "out.parquet"
    source.write_bytes(data)
    storage.put_file("jobs/2/out/data.parquet", source)
    with storage.open("jobs/2/out/data.parquet") as f:
        assert not isinstance(f, bytes | bytearray | io.BytesIO)
        blocks = []
        while block := f.read(MiB):
            assert len(block) <= MiB
            blocks.append(block)
    assert b"".join(blocks) == data
    with pytest.raises(FileNotFoundError):
        storage.open("jobs/2/out/nothing")


def test_delete_and_delete_prefix(storage: S3Storage, seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    s3 = seaweedfs.client()
    # More than one delete batch (1000 keys) under the folder, and neighbours outside it.
    keys = [f"chute/jobs/3/out/{i:04d}" for i in range(1003)]

    def put_some(some: list[str]) -> None:
        for key in some:
            s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    threads = [threading.Thread(target=put_some, args=(keys[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in ("chute/jobs/30/input.csv", "chute/jobs/3", "other/jobs/3/x"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"y")
    storage.delete_prefix("jobs/3/")
    assert sorted(seaweedfs.keys(s3_bucket)) == [
        "chute/jobs/3",
        "chute/jobs/30/input.csv",
        "other/jobs/3/x",
    ]
    storage.delete("jobs/30/input.csv")
    storage.delete("jobs/30/input.csv")  # idempotent
    assert "chute/jobs/30/input.csv" not in seaweedfs.keys(s3_bucket)
    with pytest.raises(ValueError):
        storage.delete_prefix("jobs")


def test_keys_stay_below_the_prefix(storage: S3Storage) -> None:
    for bad in ("../x", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            storage.begin(bad)


def test_wrong_credentials_give_a_clear_error(seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    wrong = storage_for(seaweedfs, s3_bucket, CHUTE_S3_SECRET_ACCESS_KEY="not-the-secret")
    with pytest.raises(StorageError, match="refused the credentials") as caught:
        wrong.begin(KEY)
    assert "not-the-secret" not in str(caught.value)


def test_an_unreachable_store_gives_a_clear_error(s3_bucket: str, seaweedfs: SeaweedFS) -> None:
    gone = storage_for(seaweedfs, s3_bucket, CHUTE_S3_ENDPOINT_URL="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="could not be reached"):
        gone.begin(KEY)


def test_the_stores_answer_is_named_in_the_error(storage: S3Storage, seaweedfs: SeaweedFS) -> None:
    """What the server's log shows when a part cannot be stored: the store's error code."""
    upload_id = storage.begin(KEY)
    missing = storage_for(seaweedfs, "chute-no-such-bucket", "chute")
    with pytest.raises(StorageError) as caught:
        put(missing, upload_id, 0, b"id,name\n1,a\n")
    assert str(caught.value) == (
        f"upload of part 1 to 'chute/{KEY}': the S3 store answered NoSuchBucket "
        "(bucket 'chute-no-such-bucket'): the bucket does not exist; check CHUTE_STORAGE_URL"
    )
    # A discarded upload: the storage contract's FileNotFoundError, which the upload path
    # checks against the database before it tells the client "discarded".
    storage.abort(upload_id)
    with pytest.raises(FileNotFoundError, match="the S3 store answered NoSuchUpload"):
        put(storage, upload_id, 0, b"id,name\n1,a\n")


def test_the_store_refuses_small_parts_but_the_last(storage: S3Storage) -> None:
    # Why the upload service checks the part size early: the store says it only at the end.
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, b"a" * 100)
    put(storage, upload_id, 1, b"b" * 10)
    with pytest.raises(StorageError, match="EntityTooSmall"):
        storage.complete(upload_id, KEY, 110, 100, [])


def request(index: int, total: int, chunk_size: int | None = None) -> ChunkRequest:
    return ChunkRequest(1, index, total, None, chunk_size, None, "data.csv")


def test_part_rules_refuse_what_s3_cannot_take(storage: S3Storage) -> None:
    assert storage.min_part_size == PART
    check_part_rules(storage, request(0, 1), 10)  # a one-chunk file may be small
    check_part_rules(storage, request(2, 3), 10)  # so may the last chunk
    check_part_rules(storage, request(0, 3), PART)
    with pytest.raises(ChuteError) as caught:
        check_part_rules(storage, request(0, 3), PART - 1)
    assert caught.value.problem is Problem.CHUNK_TOO_SMALL
    assert f"at least {PART} bytes" in caught.value.detail
    with pytest.raises(ChuteError) as caught:
        check_part_rules(storage, request(2, 3, chunk_size=1024), 10)
    assert caught.value.problem is Problem.CHUNK_TOO_SMALL
    with pytest.raises(ChuteError) as caught:
        check_part_rules(storage, request(0, 10_001), PART)
    assert caught.value.problem is Problem.TOO_MANY_PARTS


def test_min_part_size_is_a_setting(seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    lowered = storage_for(seaweedfs, s3_bucket, CHUTE_S3_MIN_PART_SIZE="1024")
    assert lowered.min_part_size == 1024
    check_part_rules(lowered, request(0, 3), 1024)
