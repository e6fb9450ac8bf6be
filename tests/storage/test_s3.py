"""S3Storage beyond the shared contract, on a real S3-compatible server (SeaweedFS): S3's
rules on parts (refused with PartRefused, before any byte), the store's answers mapped
into the contract's errors, the last byte held back so a part cut off keeps nothing,
parts streamed in bounded memory, and concatenation: sources copied as parts in the store
(in ranges above the largest part), or streamed when one is too small to be a part."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
import tracemalloc
from itertools import accumulate
from pathlib import Path

import pytest

from chute.config import GiB, MiB
from chute.storage import Part, PartRefused, PlacedPart, StorageError
from chute.storage.s3 import MAX_PART_BYTES, MAX_PARTS, S3Storage, copy_plan
from tests.conftest import storage_of
from tests.s3_support import SeaweedFS
from tests.storage.support import data_of, put, read

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
    """Why the store refuses `part`: when it opens, or (its size against the least part
    size) when its bytes are committed."""
    upload_id = storage.begin(KEY)
    try:
        with pytest.raises(PartRefused) as caught:
            writer = storage.open_part(upload_id, part)
            try:
                writer.write(b"x" * (part.size or 0))
                writer.commit()
            finally:
                writer.abort()
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


def test_rules_on_a_parts_shape_are_told_before_anything_opens(storage: S3Storage) -> None:
    """`check_part`: what the store refuses from what is known before a part's bytes."""
    with pytest.raises(PartRefused, match="send a Content-Length"):
        storage.check_part(Part(0, 0, most=PART, size=None, last=False, part_size=PART))
    with pytest.raises(PartRefused, match="parts of 10 bytes are too small"):
        storage.check_part(Part(1, 10, 10, 10, last=False, part_size=10))
    storage.check_part(Part(0, 0, 10, 10, last=True, part_size=10))  # the whole file


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


# Concatenation: parts copied in the store, or streamed when a source is too small a part.


def test_copy_plan_copies_each_source_whole_when_it_can() -> None:
    assert copy_plan([PART, PART + 1, 10], PART) == [(0, 0, PART), (1, 0, PART + 1), (2, 0, 10)]
    # An empty source gives no part, wherever it is; the last with bytes may be small.
    assert copy_plan([0, PART, 0, 10, 0], PART) == [(1, 0, PART), (3, 0, 10)]
    assert copy_plan([0, 0], PART) == []
    assert copy_plan([MAX_PART_BYTES], PART) == [(0, 0, MAX_PART_BYTES)]


def test_copy_plan_cuts_a_source_over_5_gib_into_ranges() -> None:
    assert 5 * GiB == MAX_PART_BYTES
    assert copy_plan([MAX_PART_BYTES + 1], PART) == [
        (0, 0, 5 * GiB // 2),
        (0, 5 * GiB // 2, 5 * GiB // 2 + 1),
    ]
    huge = 23 * GiB + 7
    plan = copy_plan([PART, huge, 100], PART)
    assert plan is not None
    assert [piece for piece in plan if piece[0] != 1] == [(0, 0, PART), (2, 0, 100)]
    ranges = [(start, size) for index, start, size in plan if index == 1]
    assert len(ranges) == 5  # ceil(23 GiB / 5 GiB)
    assert [start for start, _ in ranges] == list(
        accumulate([0] + [size for _, size in ranges[:-1]])
    )
    assert sum(size for _, size in ranges) == huge
    assert all(4 * GiB < size <= MAX_PART_BYTES for _, size in ranges)


def test_copy_plan_gives_up_where_s3_would_refuse_the_parts() -> None:
    # A source under the least part size that is not the last with bytes.
    assert copy_plan([PART - 1, PART], PART) is None
    assert copy_plan([PART, 1, 0, PART], PART) is None
    assert copy_plan([PART, 1, 0], PART) is not None
    # More parts than S3 takes.
    assert copy_plan([PART] * MAX_PARTS, PART) is not None
    assert copy_plan([PART] * (MAX_PARTS + 1), PART) is None


def test_copy_plan_holds_to_s3s_rules_for_any_sizes() -> None:
    rng = random.Random(7)
    least, most = 5, 40  # small stand-ins for 5 MiB and 5 GiB
    for _ in range(2000):
        sizes = [rng.choice([0, 1, 4, 5, 6, 39, 40, 41, 79, 80, 81, 200]) for _ in range(4)]
        plan = copy_plan(sizes, least, most, max_parts=12)
        with_bytes = [size for size in sizes if size]
        pieces = sum(-(-size // most) for size in sizes)
        refused = any(size < least for size in with_bytes[:-1]) or pieces > 12
        assert (plan is None) == refused, sizes
        if plan is None:
            continue
        # Every byte of every source once, in order, in parts S3 takes.
        assert [(i, start + size) for i, start, size in plan if start + size == sizes[i]] == [
            (i, size) for i, size in enumerate(sizes) if size
        ]
        at: dict[int, int] = {}
        for i, start, size in plan:
            assert start == at.get(i, 0)
            at[i] = start + size
            assert 0 < size <= most
        assert all(size >= least for _, _, size in plan[:-1])
        assert [i for i, _, _ in plan] == sorted(i for i, _, _ in plan)


def part_sizes(storage: S3Storage, key: str) -> list[int]:
    """The sizes of the parts a stored file was assembled from, as the store tells them."""
    s3, full = storage.client, storage.prefix + key
    count = s3.head_object(Bucket=storage.bucket, Key=full, PartNumber=1).get("PartsCount", 1)
    return [
        s3.head_object(Bucket=storage.bucket, Key=full, PartNumber=n)["ContentLength"]
        for n in range(1, count + 1)
    ]


def stored_sources(storage: S3Storage, tmp_path: Path, sizes: list[int]) -> dict[str, bytes]:
    sources = {}
    for n, size in enumerate(sizes):
        key = f"partials/{n}"
        sources[key] = data_of(size, seed=40 + n)
        (tmp_path / "source").write_bytes(sources[key])
        storage.put_file(key, tmp_path / "source")
    return sources


def test_sources_are_copied_as_parts(storage: S3Storage, tmp_path: Path) -> None:
    sources = stored_sources(storage, tmp_path, [PART + 1, PART, 10])
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, list(sources))
    assert read(storage, KEY) == b"".join(sources.values())
    assert part_sizes(storage, KEY) == [PART + 1, PART, 10]  # one part per source


def test_a_source_over_the_largest_part_is_copied_in_ranges(
    storage: S3Storage, tmp_path: Path
) -> None:
    # 5 GiB stands for 8 MiB here: the same ranged copies, of a size a test can send.
    storage.max_part_bytes = 8 * MiB
    sources = stored_sources(storage, tmp_path, [13 * MiB + 1, 17 * MiB, 100])
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, list(sources))
    assert read(storage, KEY) == b"".join(sources.values())
    # 13 MiB + 1 in two ranges, 17 MiB (17,825,792 bytes) in three.
    half = (13 * MiB + 1) // 2
    assert part_sizes(storage, KEY) == [half, half + 1, 5_941_930, 5_941_931, 5_941_931, 100]


def test_small_sources_stream_through_in_parts(storage: S3Storage, tmp_path: Path) -> None:
    # A first source under 5 MiB cannot be a part: the file is streamed, in parts of the
    # stream part size, each filled across the sources' ends.
    storage.stream_part_size = PART
    sources = stored_sources(storage, tmp_path, [100, PART + 1, 200, PART + 7])
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, list(sources))
    assert read(storage, KEY) == b"".join(sources.values())
    assert part_sizes(storage, KEY) == [PART, PART, 308]
    assert {o["Key"] for o in listed(storage)} == {storage.prefix + KEY}


def listed(storage: S3Storage) -> list[dict[str, object]]:
    pages = storage.client.get_paginator("list_objects_v2").paginate(
        Bucket=storage.bucket, Prefix=storage.prefix
    )
    return [o for page in pages for o in page.get("Contents", [])]


def test_streaming_holds_no_source_in_memory(storage: S3Storage, tmp_path: Path) -> None:
    size = 32 * MiB
    (tmp_path / "big").write_bytes(os.urandom(size))
    storage.put_file("partials/big", tmp_path / "big")
    (tmp_path / "small").write_bytes(b"id,x\n")
    storage.put_file("partials/small", tmp_path / "small")
    upload_id = storage.begin(KEY)
    tracemalloc.start()
    try:
        storage.concatenate(upload_id, KEY, ["partials/small", "partials/big"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The pipe's few MiB and a block read (about 7 MiB here), not the 32 MiB source.
    assert peak < 12 * MiB, peak
    with storage.open(KEY) as f:
        assert f.read(5) == b"id,x\n"
    assert (
        storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + KEY)["ContentLength"]
        == size + 5
    )


def test_concatenate_again_removes_sources_a_crash_left(storage: S3Storage, tmp_path: Path) -> None:
    sources = stored_sources(storage, tmp_path, [PART, 10])
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, list(sources))
    # What a worker that died after CompleteMultipartUpload leaves: the sources.
    for key, data in sources.items():
        (tmp_path / "source").write_bytes(data)
        storage.put_file(key, tmp_path / "source")
    storage.concatenate(upload_id, KEY, list(sources))
    assert {o["Key"] for o in listed(storage)} == {storage.prefix + KEY}
    assert read(storage, KEY) == b"".join(sources.values())


def test_concatenate_is_for_the_key_begun(storage: S3Storage, tmp_path: Path) -> None:
    stored_sources(storage, tmp_path, [3])
    upload_id = storage.begin(KEY)
    with pytest.raises(ValueError, match="another key"):
        storage.concatenate(upload_id, "jobs/2/input.csv", ["partials/0"])
    storage.abort(upload_id)
