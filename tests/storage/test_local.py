"""LocalStorage beyond the shared contract, on real files: room preallocated, parts kept
aside in files of their own, completion by rename, file locks across processes, a full
disk, keys and ids that stay inside the root, and concatenation by rename and kernel copy,
run again after a process killed at each of its steps."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chute.config import MiB
from chute.storage import Part, PlacedPart, StorageFull
from chute.storage.local import LocalStorage, _undo_preallocation
from tests.conftest import ROOT
from tests.storage.support import data_of, put, read

CHUNK = 1000
KEY = "jobs/1/input.csv"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def upload_dir(storage: LocalStorage, upload_id: str) -> Path:
    return storage.root / "uploads" / upload_id


def names(storage: LocalStorage, upload_id: str) -> set[str]:
    return {p.name for p in upload_dir(storage, upload_id).iterdir()}


def test_complete_is_a_rename_and_idempotent(storage: LocalStorage) -> None:
    data = data_of(2 * CHUNK + 5)
    upload_id = storage.begin(KEY)
    parts = [
        put(storage, upload_id, i, data[i * CHUNK : (i + 1) * CHUNK], part_size=CHUNK)
        for i in range(3)
    ]
    inode = (upload_dir(storage, upload_id) / "data").stat().st_ino

    storage.complete(upload_id, KEY, parts)
    final = storage.path(KEY)
    assert final.stat().st_ino == inode  # the same file, renamed, not a copy of it
    assert final.stat().st_nlink == 1
    assert final.read_bytes() == data  # the local path readers such as DuckDB open
    assert not upload_dir(storage, upload_id).exists()

    # A worker that runs the completion again (after a crash, say) finds it done.
    storage.complete(upload_id, KEY, parts)
    assert final.stat().st_ino == inode
    assert read(storage, KEY) == data


def test_complete_is_idempotent_after_a_crash_before_cleanup(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    parts = [put(storage, upload_id, 0, b"id\n1\n", part_size=5, aside=True)]
    storage.complete(upload_id, KEY, parts)
    # What a worker killed right after the rename leaves: the directory, minus `data`.
    directory = upload_dir(storage, upload_id)
    directory.mkdir(parents=True)
    (directory / "locks").touch()
    (directory / "part-0").write_bytes(b"id\n1\n")
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == b"id\n1\n"
    assert not directory.exists()


def test_room_is_preallocated_and_the_file_cut_to_its_size(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    data = upload_dir(storage, upload_id) / "data"
    # A part of unknown size: room for its most bytes, claimed before the first byte.
    writer = storage.open_part(upload_id, Part(0, 0, most=64 * CHUNK))
    assert data.stat().st_size >= 64 * CHUNK
    assert data.stat().st_blocks * 512 >= 64 * CHUNK
    writer.write(b"id,x\n1,2\n")
    writer.commit()
    storage.complete(upload_id, KEY, [PlacedPart(0, 0, 9)])
    assert storage.path(KEY).stat().st_size == 9
    assert read(storage, KEY) == b"id,x\n1,2\n"


def test_kept_aside_parts_wait_in_files_of_their_own(storage: LocalStorage) -> None:
    data = data_of(3 * CHUNK + 77)
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    upload_id = storage.begin(KEY)
    last = put(storage, upload_id, 3, chunks[3], part_size=CHUNK, aside=True)
    assert (upload_dir(storage, upload_id) / "part-3").read_bytes() == chunks[3]
    # A part of unknown size: its file is cut to the bytes that came, not the room claimed.
    writer = storage.open_part(upload_id, Part(1, None, most=4 * CHUNK))
    writer.write(chunks[1])
    writer.commit()
    assert (upload_dir(storage, upload_id) / "part-1").stat().st_size == CHUNK
    parts = [
        put(storage, upload_id, 0, chunks[0], part_size=CHUNK),
        PlacedPart(1, CHUNK, CHUNK, placed=False),
        put(storage, upload_id, 2, chunks[2], part_size=CHUNK),
        last,
    ]
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data
    assert not upload_dir(storage, upload_id).exists()


def test_an_uncommitted_kept_aside_part_never_looks_like_a_part(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, Part(4, None, CHUNK))
    writer.write(b"bytes of a request that then died")
    # Until commit the bytes sit under a temporary name only, made durable, then renamed.
    assert not (upload_dir(storage, upload_id) / "part-4").exists()
    writer.commit()
    assert (upload_dir(storage, upload_id) / "part-4").read_bytes() == (
        b"bytes of a request that then died"
    )
    assert names(storage, upload_id) == {"data", "locks", "part-4"}


def test_a_kept_aside_part_aborted_midway_leaves_no_file(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    before = names(storage, upload_id)
    writer = storage.open_part(upload_id, Part(5, None, CHUNK))
    writer.write(b"half of the bytes")
    writer.abort()
    writer.abort()  # safe twice
    assert names(storage, upload_id) == before


def test_a_late_part_does_not_bring_an_aborted_upload_back(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, b"x" * CHUNK, part_size=CHUNK)
    storage.abort(upload_id)
    assert not upload_dir(storage, upload_id).exists()
    for offset in (CHUNK, None):
        with pytest.raises(FileNotFoundError):
            storage.open_part(upload_id, Part(1, offset, CHUNK))
    assert not upload_dir(storage, upload_id).exists()


def test_put_file_moves_the_file_into_place(storage: LocalStorage, tmp_path: Path) -> None:
    source = tmp_path / "result.json"
    source.write_bytes(b"{}")
    inode = source.stat().st_ino
    storage.put_file("jobs/1/result.json", source)
    assert storage.path("jobs/1/result.json").stat().st_ino == inode
    assert not source.exists()


def test_put_file_from_another_file_system_copies(storage: LocalStorage, tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's temp dir")
    source = other / f"chute-test-{os.getpid()}-{tmp_path.name}"
    source.write_bytes(b"id\n1\n")
    try:
        storage.put_file("jobs/1/result.csv", source)
    finally:
        source.unlink(missing_ok=True)
    assert read(storage, "jobs/1/result.csv") == b"id\n1\n"
    # Copied beside the target, then renamed: no temporary file stays.
    assert [p.name for p in storage.path("jobs/1").iterdir()] == ["result.csv"]


HOLD_A_LOCK = """
import sys, time
from pathlib import Path
from chute.storage.local import LocalStorage

lock = LocalStorage(Path(sys.argv[1])).lock_part(sys.argv[2], 3, timeout=5)
lock.__enter__()
print("held", flush=True)
time.sleep(60)
"""


def test_a_part_lock_holds_across_processes(storage: LocalStorage) -> None:
    upload_id = storage.begin(KEY)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LOCK, str(storage.root), upload_id],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(TimeoutError), storage.lock_part(upload_id, 3, timeout=0.2):
            pytest.fail("a part locked by another process was had")
        with storage.lock_part(upload_id, 4, timeout=0.2):
            pass
        # A holder that dies never leaves the part locked: the kernel drops its lock.
        holder.kill()
        holder.wait(10)
        with storage.lock_part(upload_id, 3, timeout=5):
            pass
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_no_space_is_storage_full(storage: LocalStorage) -> None:
    # /dev/full answers every write with ENOSPC: a real full disk, without filling one.
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    upload_id = storage.begin(KEY)
    data = upload_dir(storage, upload_id) / "data"
    data.unlink()
    data.symlink_to("/dev/full")
    writer = storage.open_part(upload_id, Part(0, 0, 0))
    with pytest.raises(StorageFull):
        writer.write(b"id,name\n" * 100)
    writer.abort()


def test_room_the_disk_refuses_is_storage_full(storage: LocalStorage) -> None:
    # A preallocation past the largest file size any file system has: refused at once, on
    # every file system. (Asking for more than the free room would be the real thing, but
    # ext4 first fills the disk, which other processes on this machine share, and
    # keeps what it took; see the next test.)
    upload_id = storage.begin(KEY)
    data = upload_dir(storage, upload_id) / "data"
    with pytest.raises(StorageFull):
        storage.open_part(upload_id, Part(0, 1, most=2**63 - 1))
    assert data.stat().st_blocks == 0


def test_a_failed_preallocation_gives_its_room_back(tmp_path: Path) -> None:
    """What open_part does when ext4 runs out of room midway through a preallocation: the
    blocks it took are punched out again, and only those, so bytes written before stay."""
    path = tmp_path / "data"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        written = {0: b"x" * 8192, MiB: b"y" * 4096}  # holes before, between and after
        for offset, data in written.items():
            os.pwrite(fd, data, offset)
        os.fsync(fd)
        blocks = os.fstat(fd).st_blocks
        with pytest.raises(OSError, match="no room"), _undo_preallocation(fd, 0, 4 * MiB):
            os.posix_fallocate(fd, 0, 4 * MiB)  # the room taken, as ext4 leaves it
            assert os.fstat(fd).st_blocks * 512 >= 4 * MiB
            raise OSError(errno.ENOSPC, "no room")
        # The 4 MiB are given back; ext4 may keep a block of its own bookkeeping (extents).
        assert (os.fstat(fd).st_blocks - blocks) * 512 <= 16 * 1024
        for offset, data in written.items():
            assert os.pread(fd, len(data), offset) == data
    finally:
        os.close(fd)


def test_keys_and_ids_stay_inside_the_root(storage: LocalStorage) -> None:
    with pytest.raises(ValueError):
        storage.path("../../etc/passwd")
    with pytest.raises(ValueError):
        storage.open_part("../x", Part(0, 0, 0))
    with pytest.raises(ValueError):
        storage.abort("..")
    with pytest.raises(ValueError), storage.lock_part("../x", 0, timeout=0.1):
        pass
    with pytest.raises(ValueError):
        storage.complete("../x", KEY, [])


def test_free_bytes_is_the_disks(storage: LocalStorage) -> None:
    free = storage.free_bytes()
    stat = os.statvfs(storage.root)
    assert abs(free - stat.f_bavail * stat.f_frsize) < 64 * 1024 * 1024


# Concatenation: the first source renamed, the others appended by the kernel.


def stored_sources(storage: LocalStorage, tmp_path: Path, sizes: list[int]) -> dict[str, bytes]:
    sources = {}
    for n, size in enumerate(sizes):
        key = f"partials/{n}"
        sources[key] = data_of(size, seed=30 + n)
        file = tmp_path / "source"
        file.write_bytes(sources[key])
        storage.put_file(key, file)
    return sources


def test_concatenate_renames_the_first_source(storage: LocalStorage, tmp_path: Path) -> None:
    sources = stored_sources(storage, tmp_path, [3 * CHUNK, 2 * CHUNK + 1, 7])
    first = storage.path("partials/0").stat().st_ino
    upload_id = storage.begin(KEY)
    storage.concatenate(upload_id, KEY, list(sources))
    final = storage.path(KEY)
    assert final.stat().st_ino == first  # the first source itself, not a copy of it
    assert final.stat().st_nlink == 1
    assert final.read_bytes() == b"".join(sources.values())
    assert not upload_dir(storage, upload_id).exists()
    assert not storage.path("partials").exists() or not any(storage.path("partials").iterdir())


def test_concatenate_refuses_an_upload_with_parts(storage: LocalStorage, tmp_path: Path) -> None:
    sources = stored_sources(storage, tmp_path, [10, 20])
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, b"id\n", part_size=CHUNK)
    with pytest.raises(ValueError, match="has parts"):
        storage.concatenate(upload_id, KEY, list(sources))
    for key, data in sources.items():
        assert read(storage, key) == data


CONCATENATE_AND_DIE = """
import os, sys
from pathlib import Path
from chute.storage.local import LocalStorage

root, upload_id, name, nth, when, key, *sources = sys.argv[1:]
real = getattr(os, name)
calls = 0

def dying(*args):
    # The process dies at the nth call of os.<name>: before it, after it, or (a copy)
    # once half of its bytes are copied.
    global calls
    calls += 1
    if calls < int(nth):
        return real(*args)
    if when == "half":
        src, dst, count, *offsets = args
        real(src, dst, count // 2, *offsets)
    elif when == "after":
        real(*args)
    os._exit(3)

setattr(os, name, dying)
LocalStorage(Path(root)).concatenate(upload_id, key, sources)
"""

# Where a worker may die: (function, its nth call, before / after it / half of a copy).
CRASHES = [
    ("replace", 1, "after"),  # the manifest is written, nothing moved yet
    ("rename", 1, "after"),  # the first source is in the upload's folder
    ("copy_file_range", 1, "half"),  # half of the second source appended
    ("copy_file_range", 2, "after"),  # all appended, the file not in place yet
    ("replace", 2, "after"),  # the file in place, the sources not removed yet
    ("unlink", 1, "after"),  # one source removed
    ("unlink", 3, "after"),  # the sources removed, the upload's `data` too
    ("unlink", 4, "after"),  # the manifest removed, the upload's folder not yet
]


def die_concatenating(
    storage: LocalStorage, upload_id: str, sources: list[str], crash: tuple[str, int, str]
) -> None:
    name, nth, when = crash
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            CONCATENATE_AND_DIE,
            str(storage.root),
            upload_id,
            name,
            str(nth),
            when,
            KEY,
            *sources,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )
    assert died.returncode == 3, died.stderr.decode()  # it died where it was told to


@pytest.mark.parametrize("crash", CRASHES, ids=[f"{n}-{i}-{w}" for n, i, w in CRASHES])
def test_concatenate_again_after_a_crash(
    storage: LocalStorage, tmp_path: Path, crash: tuple[str, int, str]
) -> None:
    sources = stored_sources(storage, tmp_path, [3 * CHUNK, 5 * CHUNK + 3, 2 * CHUNK + 1])
    first = storage.path("partials/0").stat().st_ino
    upload_id = storage.begin(KEY)
    die_concatenating(storage, upload_id, list(sources), crash)
    storage.concatenate(upload_id, KEY, list(sources))
    final = storage.path(KEY)
    assert final.read_bytes() == b"".join(sources.values())
    assert final.stat().st_ino == first
    assert not upload_dir(storage, upload_id).exists()
    assert not any(storage.path("partials").iterdir())
    storage.concatenate(upload_id, KEY, list(sources))  # and again: done
    assert final.read_bytes() == b"".join(sources.values())


@pytest.mark.parametrize("crash", CRASHES[:4], ids=[f"{n}-{i}-{w}" for n, i, w in CRASHES[:4]])
def test_abort_after_a_crash_gives_the_sources_back(
    storage: LocalStorage, tmp_path: Path, crash: tuple[str, int, str]
) -> None:
    sources = stored_sources(storage, tmp_path, [3 * CHUNK, 5 * CHUNK + 3, 2 * CHUNK + 1])
    first = storage.path("partials/0").stat().st_ino
    upload_id = storage.begin(KEY)
    die_concatenating(storage, upload_id, list(sources), crash)
    storage.abort(upload_id)
    for key, data in sources.items():
        assert read(storage, key) == data
    assert storage.path("partials/0").stat().st_ino == first
    assert not storage.path(KEY).exists()
    assert not upload_dir(storage, upload_id).exists()


def test_a_failure_midway_puts_the_first_source_back(storage: LocalStorage, tmp_path: Path) -> None:
    sources = stored_sources(storage, tmp_path, [3 * CHUNK, 2 * CHUNK, 5])
    first = storage.path("partials/0").stat().st_ino
    # A source that is there but cannot be read as a file: the kernel copy of it fails.
    unreadable = storage.path("partials/1")
    unreadable.unlink()
    unreadable.mkdir()
    upload_id = storage.begin(KEY)
    with pytest.raises(IsADirectoryError):
        storage.concatenate(upload_id, KEY, list(sources))
    assert storage.path("partials/0").stat().st_ino == first
    assert read(storage, "partials/0") == sources["partials/0"]
    assert names(storage, upload_id) == {"data", "locks"}
    assert not storage.path(KEY).exists()
    # Once the source is a file again, the same upload completes.
    unreadable.rmdir()
    unreadable.write_bytes(sources["partials/1"])
    storage.concatenate(upload_id, KEY, list(sources))
    assert read(storage, KEY) == b"".join(sources.values())
    assert storage.path(KEY).stat().st_ino == first
