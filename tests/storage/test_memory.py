"""MemoryStorage beyond the shared contract: parts committed whole, a strict `complete`,
announced sizes held to, room counted like a disk's, and stores named by memory:// URLs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chute.config import Settings
from chute.storage import Part, PartRefused, PlacedPart, StorageError, StorageFull, make_storage
from chute.storage.memory import MemoryStorage, forget, storage_at
from tests.storage.support import put, read

KEY = "jobs/1/input.csv"
PART = 100


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


def test_bytes_are_seen_only_once_committed(storage: MemoryStorage) -> None:
    upload_id = storage.begin(KEY)
    first = put(storage, upload_id, 0, b"a" * PART, part_size=PART)
    # A second writer of the part writes all its bytes, then is aborted: the first stays.
    writer = storage.open_part(upload_id, Part(0, 0, PART, PART))
    writer.write(b"b" * PART)
    writer.abort()
    # A writer of part 1 not committed yet: part 1 is not there.
    pending = storage.open_part(upload_id, Part(1, PART, 5, 5))
    pending.write(b"tail\n")
    tail = PlacedPart(1, PART, 5)
    with pytest.raises(StorageError, match="part 1 is missing"):
        storage.complete(upload_id, KEY, [first, tail])
    pending.commit()
    storage.complete(upload_id, KEY, [first, tail])
    assert read(storage, KEY) == b"a" * PART + b"tail\n"


@pytest.mark.parametrize(
    ("recorded", "why"),
    [
        ([PlacedPart(0, 0, PART), PlacedPart(1, PART, 4)], "holds 5 bytes, not 4"),
        ([PlacedPart(0, 0, PART), PlacedPart(1, PART, 5, placed=False)], "written at 100"),
        ([PlacedPart(0, 0, PART, placed=False), PlacedPart(1, PART, 5)], "written at 0"),
        ([PlacedPart(0, 0, PART), PlacedPart(1, PART + 1, 5)], "does not follow"),
        ([PlacedPart(0, 0, PART), PlacedPart(0, PART, PART)], "does not follow"),
        ([PlacedPart(0, 0, PART), PlacedPart(2, PART, 5)], "part 2 is missing"),
    ],
)
def test_complete_takes_parts_only_as_they_were_committed(
    storage: MemoryStorage, recorded: list[PlacedPart], why: str
) -> None:
    # Where local disk would assemble a wrong file (or S3 refuse it), this store says so.
    upload_id = storage.begin(KEY)
    parts = [
        put(storage, upload_id, 0, b"a" * PART, part_size=PART),
        put(storage, upload_id, 1, b"tail\n", part_size=PART),
    ]
    with pytest.raises(StorageError, match=why):
        storage.complete(upload_id, KEY, recorded)
    # Nothing was consumed: the right parts still complete it.
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == b"a" * PART + b"tail\n"


def test_a_kept_aside_part_is_written_aside(storage: MemoryStorage) -> None:
    upload_id = storage.begin(KEY)
    aside = put(storage, upload_id, 1, b"tail\n", part_size=PART, aside=True)
    first = put(storage, upload_id, 0, b"a" * PART, part_size=PART)
    with pytest.raises(StorageError, match="part 1 was written kept aside"):
        storage.complete(upload_id, KEY, [first, PlacedPart(1, PART, 5)])
    storage.complete(upload_id, KEY, [first, aside])


def test_an_announced_size_is_held_to(storage: MemoryStorage) -> None:
    upload_id = storage.begin(KEY)
    long = storage.open_part(upload_id, Part(0, 0, 100, size=10))
    long.write(b"x" * 10)
    with pytest.raises(PartRefused, match="announced with 10 bytes, but more came"):
        long.write(b"x")
    long.abort()
    short = storage.open_part(upload_id, Part(0, 0, 100, size=10))
    short.write(b"x" * 9)
    with pytest.raises(PartRefused, match="announced with 10 bytes, but 9 came"):
        short.commit()
    assert storage.pending() == {upload_id: 0}
    # Without an announced size, any count up to the part's most is taken.
    unknown = storage.open_part(upload_id, Part(0, 0, 100))
    unknown.write(b"x" * 9)
    unknown.commit()
    assert storage.pending() == {upload_id: 9}


def test_begin_names_the_key_complete_stores(storage: MemoryStorage) -> None:
    upload_id = storage.begin(KEY)
    part = put(storage, upload_id, 0, b"id\n", part_size=PART)
    with pytest.raises(ValueError, match="another key"):
        storage.complete(upload_id, "jobs/2/input.csv", [part])
    with pytest.raises(ValueError):
        storage.begin("../outside")


def test_a_commit_after_the_upload_was_aborted_fails(storage: MemoryStorage) -> None:
    capped = MemoryStorage(capacity=1000)
    upload_id = capped.begin(KEY)
    writer = capped.open_part(upload_id, Part(0, 0, 100, 100))
    writer.write(b"x" * 100)
    capped.abort(upload_id)
    with pytest.raises(FileNotFoundError):
        writer.commit()
    writer.abort()
    assert capped.pending() == {}
    assert capped.free_bytes() == 1000  # the writer's room is given back


def test_room_is_counted_like_a_disks(tmp_path: Path) -> None:
    storage = MemoryStorage(capacity=1000)
    assert storage.free_bytes() == 1000
    upload_id = storage.begin(KEY)
    # The part's room is claimed when it opens, as local disk preallocates it.
    writer = storage.open_part(upload_id, Part(0, 0, most=600))
    assert storage.free_bytes() == 400
    with pytest.raises(StorageFull):
        storage.open_part(upload_id, Part(1, 600, most=500))
    assert storage.free_bytes() == 400  # a refused part claims nothing
    writer.write(b"x" * 300)
    writer.commit()  # what it did not use is given back
    assert storage.free_bytes() == 700
    # Written past its claim, a part takes more room while there is some.
    second = storage.open_part(upload_id, Part(1, 300, most=100))
    second.write(b"y" * 650)
    with pytest.raises(StorageFull):
        second.write(b"y" * 100)
    second.abort()
    assert storage.free_bytes() == 700
    # A part written again replaces the room of the first.
    put(storage, upload_id, 0, b"z" * 200, part_size=300)
    assert storage.free_bytes() == 800
    tail = put(storage, upload_id, 1, b"tail", part_size=200)
    storage.complete(upload_id, KEY, [PlacedPart(0, 0, 200), tail])
    assert storage.free_bytes() == 796
    source = tmp_path / "big"
    source.write_bytes(b"r" * 797)
    with pytest.raises(StorageFull):
        storage.put_file("jobs/1/result", source)
    source.write_bytes(b"r" * 796)
    storage.put_file("jobs/1/result", source)
    assert storage.free_bytes() == 0
    storage.delete(KEY)
    storage.delete_prefix("jobs/")
    assert storage.free_bytes() == 1000


def test_room_stays_exact_under_threads() -> None:
    storage = MemoryStorage(capacity=10_000_000)
    upload_id = storage.begin(KEY)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for round_ in range(50):
                writer = storage.open_part(upload_id, Part(n, None, most=1000))
                writer.write(b"x" * (round_ * 37 % 1500))
                if round_ % 3:
                    writer.commit()
                else:
                    writer.abort()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    held = storage.pending()[upload_id]
    assert held == 8 * (49 * 37 % 1500)  # each part's last commit, round 49
    assert storage.free_bytes() == 10_000_000 - held
    storage.abort(upload_id)
    assert storage.free_bytes() == 10_000_000


def test_a_lock_not_had_at_once_with_no_time_to_wait(storage: MemoryStorage) -> None:
    upload_id = storage.begin(KEY)
    with (
        storage.lock_part(upload_id, 0, timeout=1),
        pytest.raises(TimeoutError),
        storage.lock_part(upload_id, 0, timeout=0),
    ):
        pytest.fail("two holders of one part lock")


def test_memory_urls_name_one_store_per_process() -> None:
    def open_(url: str) -> MemoryStorage:
        storage = make_storage(Settings(storage_url=url))
        assert isinstance(storage, MemoryStorage)
        return storage

    try:
        first = open_("memory://contract-a")
        assert open_("memory://contract-a") is first
        assert open_("memory://contract-b") is not first
        upload_id = first.begin(KEY)
        assert open_("memory://contract-a").pending() == {upload_id: 0}
        capped = open_("memory://contract-c?capacity=5000")
        assert capped.free_bytes() == 5000
        with pytest.raises(ValueError, match="capacity"):
            open_("memory://contract-c?capacity=10")
        forget("contract-a")
        assert open_("memory://contract-a") is not first
    finally:
        for name in ("contract-a", "contract-b", "contract-c"):
            forget(name)
    with pytest.raises(ValueError, match="names its store"):
        storage_at("memory://")


def test_concatenate_takes_only_an_upload_without_parts(
    storage: MemoryStorage, tmp_path: Path
) -> None:
    for name, data in (("partials/a", b"id\n"), ("partials/b", b"1\n")):
        (tmp_path / "source").write_bytes(data)
        storage.put_file(name, tmp_path / "source")
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, b"x", part_size=PART)
    with pytest.raises(ValueError, match="has parts"):
        storage.concatenate(upload_id, KEY, ["partials/a", "partials/b"])
    other = storage.begin("jobs/2/input.csv")
    with pytest.raises(ValueError, match="another key"):
        storage.concatenate(other, KEY, ["partials/a", "partials/b"])
    assert storage.keys() == {"partials/a", "partials/b"}
    storage.concatenate(other, "jobs/2/input.csv", ["partials/a", "partials/b"])
    assert read(storage, "jobs/2/input.csv") == b"id\n1\n"


def test_concatenate_counts_room_like_a_disk(tmp_path: Path) -> None:
    storage = MemoryStorage(capacity=100)
    for name, size in (("partials/a", 40), ("partials/b", 30)):
        source = tmp_path / name.replace("/", "-")
        source.write_bytes(b"x" * size)
        storage.put_file(name, source)
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, ["partials/a", "partials/b"])
    # The file holds the room its sources held, no more.
    assert storage.free_bytes() == 30
