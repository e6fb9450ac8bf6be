"""LocalStorage on real files: parts in place, completion by rename, aborts, part locks."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from chute.storage.base import PartLocking, StagedPart, StorageFull
from chute.storage.local import LocalStorage

CHUNK = 1000


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def data_of(size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def put(storage: LocalStorage, upload_id: str, index: int, data: bytes, offset: int | None) -> None:
    writer = storage.open_part(upload_id, index, offset, CHUNK)
    for start in range(0, len(data), 333):  # several writes per part
        writer.write(data[start : start + 333])
    writer.commit()


def upload_dir(storage: LocalStorage, upload_id: str) -> Path:
    return storage.root / "uploads" / upload_id


def read(storage: LocalStorage, key: str) -> bytes:
    with storage.open(key) as f:
        return f.read()


def test_parts_at_their_offsets_assemble_the_file(storage: LocalStorage) -> None:
    data = data_of(4 * CHUNK + 321)
    parts = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    upload_id = storage.begin("jobs/1/input.csv")
    for index in (3, 0, 4, 2, 1):  # out of order
        put(storage, upload_id, index, parts[index], index * CHUNK)
    storage.complete(upload_id, "jobs/1/input.csv", len(data), CHUNK, [])
    assert read(storage, "jobs/1/input.csv") == data
    assert storage.path("jobs/1/input.csv").stat().st_size == len(data)


def test_a_part_written_again_replaces_its_bytes(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    put(storage, upload_id, 0, b"a" * CHUNK, 0)
    put(storage, upload_id, 1, b"b" * 10, CHUNK)
    put(storage, upload_id, 0, b"c" * CHUNK, 0)
    storage.complete(upload_id, "k", CHUNK + 10, CHUNK, [])
    assert read(storage, "k") == b"c" * CHUNK + b"b" * 10


def test_complete_is_a_rename_and_idempotent(storage: LocalStorage) -> None:
    data = data_of(2 * CHUNK + 5)
    upload_id = storage.begin("jobs/1/input.csv")
    for index in range(3):
        put(storage, upload_id, index, data[index * CHUNK : (index + 1) * CHUNK], index * CHUNK)
    inode = (upload_dir(storage, upload_id) / "data").stat().st_ino

    storage.complete(upload_id, "jobs/7/input.csv", len(data), CHUNK, [])
    final = storage.path("jobs/7/input.csv")
    assert final.stat().st_ino == inode  # the same file, renamed, not a copy of it
    assert final.stat().st_nlink == 1
    assert not upload_dir(storage, upload_id).exists()
    assert read(storage, "jobs/7/input.csv") == data

    # A worker that runs the completion again (after a crash, say) finds it done.
    storage.complete(upload_id, "jobs/7/input.csv", len(data), CHUNK, [])
    assert final.stat().st_ino == inode
    assert read(storage, "jobs/7/input.csv") == data


def test_complete_of_an_unknown_upload_fails(storage: LocalStorage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.complete("0123abcd", "never", 1, 1, [])


def test_staged_parts_are_copied_into_place(storage: LocalStorage) -> None:
    data = data_of(3 * CHUNK + 77)
    parts = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    upload_id = storage.begin("jobs/1/input.csv")
    # The 2, 0, 1 order: the last part (and here another) before the chunk size is known.
    put(storage, upload_id, 3, parts[3], None)
    put(storage, upload_id, 1, parts[1], None)
    assert (upload_dir(storage, upload_id) / "part-3").read_bytes() == parts[3]
    put(storage, upload_id, 0, parts[0], 0)
    put(storage, upload_id, 2, parts[2], 2 * CHUNK)
    staged = [StagedPart(3, len(parts[3])), StagedPart(1, CHUNK)]
    storage.complete(upload_id, "staged", len(data), CHUNK, staged)
    assert read(storage, "staged") == data
    assert not upload_dir(storage, upload_id).exists()


def test_a_single_staged_part_is_the_whole_file(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    put(storage, upload_id, 0, b"id,x\n1,2\n", None)
    storage.complete(upload_id, "one", 9, 9, [StagedPart(0, 9)])
    assert read(storage, "one") == b"id,x\n1,2\n"


def test_abort_removes_everything(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    put(storage, upload_id, 0, b"x" * CHUNK, 0)
    put(storage, upload_id, 2, b"y" * 10, None)
    assert upload_dir(storage, upload_id).exists()
    storage.abort(upload_id)
    assert not upload_dir(storage, upload_id).exists()
    assert list((storage.root / "uploads").iterdir()) == []
    storage.abort(upload_id)  # idempotent
    # A late request for the aborted upload fails instead of bringing a file back.
    with pytest.raises(FileNotFoundError):
        storage.open_part(upload_id, 1, CHUNK, CHUNK)
    with pytest.raises(FileNotFoundError):
        storage.open_part(upload_id, 1, None, CHUNK)
    assert not upload_dir(storage, upload_id).exists()


def test_a_staged_part_aborted_midway_leaves_no_file(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    before = sorted(p.name for p in upload_dir(storage, upload_id).iterdir())
    writer = storage.open_part(upload_id, 5, None, CHUNK)
    writer.write(b"half of the bytes")
    writer.abort()
    writer.abort()  # safe twice
    assert sorted(p.name for p in upload_dir(storage, upload_id).iterdir()) == before
    assert not (upload_dir(storage, upload_id) / "part-5").exists()


def test_an_uncommitted_staged_part_never_looks_like_a_part(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    writer = storage.open_part(upload_id, 4, None, CHUNK)
    writer.write(b"bytes of a request that then died")
    # Until commit the bytes sit under a temporary name only.
    assert not (upload_dir(storage, upload_id) / "part-4").exists()
    writer.commit()
    assert (upload_dir(storage, upload_id) / "part-4").read_bytes() == (
        b"bytes of a request that then died"
    )
    names = {p.name for p in upload_dir(storage, upload_id).iterdir()}
    assert names == {"data", "locks", "part-4"}


def test_lock_part_excludes_a_second_holder(storage: LocalStorage) -> None:
    assert isinstance(storage, PartLocking)
    upload_id = storage.begin("jobs/1/input.csv")
    with storage.lock_part(upload_id, 3, timeout=1):
        with pytest.raises(TimeoutError), storage.lock_part(upload_id, 3, timeout=0.1):
            pytest.fail("two holders of one part lock")
        # Another part is not locked by it.
        with storage.lock_part(upload_id, 4, timeout=0.1):
            pass
    # Free again after release.
    with storage.lock_part(upload_id, 3, timeout=0.1):
        pass


def test_lock_part_waits_for_the_holder(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    held = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with storage.lock_part(upload_id, 0, timeout=1):
            held.set()
            release.wait(5)
            order.append("holder released")

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(5)
        threading.Timer(0.2, release.set).start()
        with storage.lock_part(upload_id, 0, timeout=5):
            order.append("waiter acquired")
    finally:
        release.set()
        thread.join(5)
    assert order == ["holder released", "waiter acquired"]


def test_lock_part_of_an_aborted_upload_fails(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    storage.abort(upload_id)
    with pytest.raises(FileNotFoundError), storage.lock_part(upload_id, 0, timeout=0.1):
        pass


def test_no_space_is_storage_full(storage: LocalStorage) -> None:
    # /dev/full answers every write with ENOSPC: a real full disk, without filling one.
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    upload_id = storage.begin("jobs/1/input.csv")
    data = upload_dir(storage, upload_id) / "data"
    data.unlink()
    data.symlink_to("/dev/full")
    writer = storage.open_part(upload_id, 0, 0, 0)
    with pytest.raises(StorageFull):
        writer.write(b"id,name\n" * 100)
    writer.abort()


def test_keys_and_ids_stay_inside_the_root(storage: LocalStorage) -> None:
    with pytest.raises(ValueError):
        storage.path("../../etc/passwd")
    with pytest.raises(ValueError):
        storage.open_part("../x", 0, 0, 0)
    with pytest.raises(ValueError):
        storage.abort("..")


def test_delete_is_idempotent(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    put(storage, upload_id, 0, b"abc", None)
    storage.complete(upload_id, "gone", 3, 3, [StagedPart(0, 3)])
    assert storage.path("gone").exists()
    storage.delete("gone")
    assert not storage.path("gone").exists()
    storage.delete("gone")


def test_free_bytes_is_the_disks(storage: LocalStorage) -> None:
    free = storage.free_bytes()
    stat = os.statvfs(storage.root)
    assert free is not None
    assert abs(free - stat.f_bavail * stat.f_frsize) < 64 * 1024 * 1024


def test_complete_is_idempotent_after_a_crash_before_cleanup(storage: LocalStorage) -> None:
    upload_id = storage.begin("jobs/1/input.csv")
    put(storage, upload_id, 0, b"id\n1\n", None)
    staged = [StagedPart(0, 5)]
    storage.complete(upload_id, "crash", 5, 5, staged)
    # What a worker killed right after the rename leaves: the directory, minus `data`.
    directory = upload_dir(storage, upload_id)
    directory.mkdir(parents=True)
    (directory / "locks").touch()
    (directory / "part-0").write_bytes(b"id\n1\n")
    storage.complete(upload_id, "crash", 5, 5, staged)
    assert read(storage, "crash") == b"id\n1\n"
