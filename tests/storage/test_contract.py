"""The storage contract (chute/storage/base.py), the same tests over every backend: in
memory, local disk, and S3 on a real S3-compatible server (SeaweedFS, started once per
session when an S3 test first needs it).

What only one backend does is tested beside it: test_memory.py, test_local.py, test_s3.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from chute.config import MiB
from chute.storage import LocalPaths, Part, PartLocking, PlacedPart, Storage
from chute.storage.local import LocalStorage
from chute.storage.memory import MemoryStorage
from chute.storage.s3 import S3Storage
from tests.storage.support import data_of, put, read

KEY = "jobs/1/input.csv"


@dataclass
class Backend:
    name: str
    storage: Storage
    # The part size of files of several parts: S3 takes no part under 5 MiB but the last.
    part: int
    # The unfinished uploads the backend holds, by id, and its stored files, by key: read
    # beside the storage, not through it.
    uploads: Callable[[], set[str]]
    keys: Callable[[], set[str]]
    capabilities: frozenset[type]


def memory_backend() -> Backend:
    storage = MemoryStorage()
    return Backend(
        "memory",
        storage,
        1000,
        lambda: set(storage.pending()),
        storage.keys,
        frozenset({PartLocking}),
    )


def local_backend(root: Path) -> Backend:
    storage = LocalStorage(root)

    def uploads() -> set[str]:
        folder = root / "uploads"
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def keys() -> set[str]:
        folder = root / "objects"
        files = (p for p in folder.rglob("*") if p.is_file()) if folder.exists() else ()
        return {str(p.relative_to(folder)) for p in files}

    return Backend("local", storage, 1000, uploads, keys, frozenset({PartLocking, LocalPaths}))


def s3_backend(storage: S3Storage) -> Backend:
    s3, bucket, prefix = storage.client, storage.bucket, storage.prefix

    def uploads() -> set[str]:
        listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        # The storage id: "<UploadId> <key>" (chute/storage/s3.py).
        return {f"{u['UploadId']} {u['Key'].removeprefix(prefix)}" for u in listed}

    def keys() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}

    return Backend("s3", storage, 5 * MiB, uploads, keys, frozenset())


@pytest.fixture(params=["memory", "local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        return memory_backend()
    if request.param == "local":
        return local_backend(tmp_path / "files")
    # SeaweedFS starts only when the first S3 test asks for it.
    return s3_backend(request.getfixturevalue("s3_storage"))


@pytest.fixture(params=["memory", "local"])
def locking(request: pytest.FixtureRequest, tmp_path: Path) -> PartLocking:
    """A backend with part locks of its own."""
    backend = memory_backend() if request.param == "memory" else local_backend(tmp_path)
    assert isinstance(backend.storage, PartLocking)
    return backend.storage


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def put_all(
    backend: Backend,
    upload_id: str,
    data: bytes,
    order: list[int] | None = None,
    aside: frozenset[int] = frozenset(),
) -> list[PlacedPart]:
    """Write `data` as parts of the backend's part size, in `order`, the parts in `aside`
    kept aside; the parts in file order."""
    parts = split(data, backend.part)
    placed = {}
    for index in order if order is not None else range(len(parts)):
        last = index == len(parts) - 1
        placed[index] = put(
            backend.storage,
            upload_id,
            index,
            parts[index],
            part_size=backend.part,
            aside=index in aside,
            last=last,
        )
    return [placed[i] for i in sorted(placed)]


def test_parts_out_of_order_assemble_the_file(backend: Backend) -> None:
    storage = backend.storage
    data = data_of(4 * backend.part + 321)
    upload_id = storage.begin(KEY)
    assert upload_id in backend.uploads()
    parts = put_all(backend, upload_id, data, order=[3, 0, 4, 2, 1])
    assert backend.keys() == set()  # nothing is a file before `complete`
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data
    assert backend.uploads() == set()
    assert backend.keys() == {KEY}


def test_kept_aside_parts_are_placed_at_completion(backend: Backend) -> None:
    storage = backend.storage
    data = data_of(3 * backend.part + 77, seed=1)
    upload_id = storage.begin(KEY)
    # The last part, and another, before their offsets were known; the others in place.
    parts = put_all(backend, upload_id, data, order=[3, 1, 0, 2], aside=frozenset({3, 1}))
    assert [p.placed for p in parts] == [True, False, True, False]
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data


def test_a_single_kept_aside_part_is_the_whole_file(backend: Backend) -> None:
    upload_id = backend.storage.begin(KEY)
    part = put(
        backend.storage, upload_id, 0, b"id,x\n1,2\n", part_size=backend.part, aside=True, last=True
    )
    backend.storage.complete(upload_id, KEY, [part])
    assert read(backend.storage, KEY) == b"id,x\n1,2\n"


def test_a_committed_part_is_replaced_whole(backend: Backend) -> None:
    storage, size = backend.storage, backend.part
    first, second = data_of(size, seed=2), data_of(size, seed=3)
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, first, part_size=size, last=False)
    put(storage, upload_id, 1, b"a longer tail\n", part_size=size, last=True)
    put(storage, upload_id, 0, second, part_size=size, last=False)
    # The last part again, shorter: nothing of the longer one may stay behind it.
    tail = put(storage, upload_id, 1, b"tail\n", part_size=size, last=True)
    storage.complete(upload_id, KEY, [PlacedPart(0, 0, size), tail])
    assert read(storage, KEY) == second + b"tail\n"


def test_a_kept_aside_part_is_replaced_whole(backend: Backend) -> None:
    storage, size = backend.storage, backend.part
    head = data_of(size, seed=4)
    upload_id = storage.begin(KEY)
    first = put(storage, upload_id, 0, head, part_size=size, last=False)
    put(storage, upload_id, 1, b"the first tail\n", part_size=size, aside=True, last=True)
    tail = put(storage, upload_id, 1, b"tail\n", part_size=size, aside=True, last=True)
    storage.complete(upload_id, KEY, [first, tail])
    assert read(storage, KEY) == head + b"tail\n"


@pytest.mark.parametrize("aside", [False, True])
def test_a_part_aborted_midway_and_sent_again(backend: Backend, aside: bool) -> None:
    storage, size = backend.storage, backend.part
    data = data_of(size + 10, seed=5)
    upload_id = storage.begin(KEY)
    writer = storage.open_part(
        upload_id, Part(0, None if aside else 0, size, size, last=False, part_size=size)
    )
    writer.write(b"half of the bytes of a request that then died")
    writer.abort()
    writer.abort()  # safe twice
    parts = put_all(backend, upload_id, data, aside=frozenset({0} if aside else ()))
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data


def test_parts_written_at_once_from_several_threads(backend: Backend) -> None:
    storage = backend.storage
    data = data_of(3 * backend.part + 5, seed=6)
    chunks = split(data, backend.part)
    upload_id = storage.begin(KEY)
    errors: list[BaseException] = []

    def send(index: int) -> None:
        try:
            put(
                storage,
                upload_id,
                index,
                chunks[index],
                part_size=backend.part,
                aside=index % 2 == 1,
                last=index == len(chunks) - 1,
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(chunks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    parts = [
        PlacedPart(i, i * backend.part, len(c), placed=i % 2 == 0) for i, c in enumerate(chunks)
    ]
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data


def test_the_writer_copies_what_it_keeps(backend: Backend) -> None:
    # The upload path hands over views of buffers that it reuses for the next bytes.
    storage = backend.storage
    data = data_of(backend.part, seed=7)
    upload_id = storage.begin(KEY)
    writer = storage.open_part(upload_id, Part(0, 0, len(data), len(data), last=True))
    buffer = bytearray(len(data) // 4 + 1)
    for start in range(0, len(data), len(buffer)):
        piece = data[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        writer.write(memoryview(buffer)[: len(piece)])
        buffer[:] = b"\0" * len(buffer)
    writer.commit()
    storage.complete(upload_id, KEY, [PlacedPart(0, 0, len(data))])
    assert read(storage, KEY) == data


def test_complete_is_idempotent(backend: Backend) -> None:
    storage = backend.storage
    data = data_of(backend.part + 7, seed=8)
    upload_id = storage.begin(KEY)
    parts = put_all(backend, upload_id, data)
    storage.complete(upload_id, KEY, parts)
    # A worker that runs the completion again (after a crash, say) finds it done.
    storage.complete(upload_id, KEY, parts)
    assert read(storage, KEY) == data
    assert backend.keys() == {KEY}


def test_complete_of_an_unknown_upload_fails(backend: Backend) -> None:
    upload_id = backend.storage.begin(KEY)
    backend.storage.abort(upload_id)
    with pytest.raises(FileNotFoundError):
        backend.storage.complete(upload_id, KEY, [PlacedPart(0, 0, 1)])
    assert backend.keys() == set()


def test_abort_leaves_nothing(backend: Backend) -> None:
    storage, size = backend.storage, backend.part
    upload_id = storage.begin(KEY)
    put(storage, upload_id, 0, data_of(size), part_size=size, last=False)
    put(storage, upload_id, 2, b"last", part_size=size, aside=True, last=True)
    assert upload_id in backend.uploads()
    storage.abort(upload_id)
    storage.abort(upload_id)  # idempotent
    assert backend.uploads() == set()
    assert backend.keys() == set()
    # A late request for the aborted upload fails instead of bringing a part back.
    for offset in (size, None):
        with pytest.raises(FileNotFoundError):
            writer = storage.open_part(upload_id, Part(1, offset, 4, 4, last=True, part_size=size))
            try:
                writer.write(b"late")
                writer.commit()
            finally:
                writer.abort()
    assert backend.uploads() == set()
    assert backend.keys() == set()


def test_abort_after_complete_keeps_the_file(backend: Backend) -> None:
    upload_id = backend.storage.begin(KEY)
    part = put(backend.storage, upload_id, 0, b"id\n1\n", part_size=backend.part, last=True)
    backend.storage.complete(upload_id, KEY, [part])
    backend.storage.abort(upload_id)
    assert read(backend.storage, KEY) == b"id\n1\n"


def test_open_reads_a_file_in_blocks(backend: Backend, tmp_path: Path) -> None:
    data = data_of(3 * MiB + 5, seed=9)
    source = tmp_path / "out.parquet"
    source.write_bytes(data)
    backend.storage.put_file("jobs/2/out/data.parquet", source)
    blocks = []
    with backend.storage.open("jobs/2/out/data.parquet") as f:
        while block := f.read(MiB):
            assert len(block) <= MiB
            blocks.append(block)
    assert b"".join(blocks) == data


def test_open_of_a_missing_file_fails(backend: Backend) -> None:
    with pytest.raises(FileNotFoundError):
        backend.storage.open("jobs/2/out/nothing")


def test_put_file_stores_and_replaces(backend: Backend, tmp_path: Path) -> None:
    storage = backend.storage
    for n, content in enumerate((b"first version\n", b"second\n")):
        source = tmp_path / f"result-{n}.json"
        source.write_bytes(content)
        storage.put_file("jobs/2/result.json", source)
        assert read(storage, "jobs/2/result.json") == content
    assert backend.keys() == {"jobs/2/result.json"}


def test_delete_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"abc")
    backend.storage.put_file("gone", source)
    backend.storage.delete("gone")
    assert backend.keys() == set()
    with pytest.raises(FileNotFoundError):
        backend.storage.open("gone")
    backend.storage.delete("gone")
    backend.storage.delete("never/was")


def test_delete_prefix_removes_a_folder(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "x"
    inside = ["jobs/3/out/a", "jobs/3/out/sub/b", "jobs/3/input.csv"]
    neighbours = ["jobs/30/input.csv", "jobs/4/out/a", "jobs/3x"]
    for key in inside + neighbours:
        source.write_bytes(key.encode())
        backend.storage.put_file(key, source)
    backend.storage.delete_prefix("jobs/3/")
    assert backend.keys() == set(neighbours)
    backend.storage.delete_prefix("jobs/3/")  # idempotent
    for bad in ("jobs", "/", "", "../"):
        with pytest.raises(ValueError):
            backend.storage.delete_prefix(bad)
    assert backend.keys() == set(neighbours)


def test_keys_stay_inside_the_store(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"x")
    for bad in ("../x", "a/../../b", "/abs", "../../etc/passwd"):
        with pytest.raises(ValueError):
            backend.storage.open(bad)
        with pytest.raises(ValueError):
            backend.storage.put_file(bad, source)
        with pytest.raises(ValueError):
            backend.storage.delete(bad)
    assert backend.keys() == set()


def test_free_bytes_is_a_count_or_unknown(backend: Backend) -> None:
    free = backend.storage.free_bytes()
    assert free is None or (isinstance(free, int) and free >= 0)


def test_part_size_fits_the_backends_rules(backend: Backend) -> None:
    storage = backend.storage
    for wanted, length in ((MiB, 10 * MiB), (MiB, 10**12), (100 * MiB, 1), (1, 1)):
        size = storage.part_size(wanted, length)
        assert size >= wanted
        if storage.max_parts is not None:
            assert -(-length // size) <= storage.max_parts


def test_capabilities(backend: Backend) -> None:
    declared = {c for c in (PartLocking, LocalPaths) if isinstance(backend.storage, c)}
    assert declared == backend.capabilities


# Part locks, on the backends that have them.


def test_lock_part_excludes_a_second_holder(locking: PartLocking) -> None:
    assert isinstance(locking, Storage)
    upload_id = locking.begin(KEY)
    with locking.lock_part(upload_id, 3, timeout=1) as held:
        assert held.still_held()
        with pytest.raises(TimeoutError), locking.lock_part(upload_id, 3, timeout=0.1):
            pytest.fail("two holders of one part lock")
        # Another part is not locked by it.
        with locking.lock_part(upload_id, 4, timeout=0.1):
            pass
    # Free again after release.
    with locking.lock_part(upload_id, 3, timeout=0.1):
        pass


def test_lock_part_waits_for_the_holder(locking: PartLocking) -> None:
    assert isinstance(locking, Storage)
    upload_id = locking.begin(KEY)
    held = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with locking.lock_part(upload_id, 0, timeout=1):
            held.set()
            release.wait(5)
            order.append("holder released")

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(5)
        threading.Timer(0.2, release.set).start()
        with locking.lock_part(upload_id, 0, timeout=5):
            order.append("waiter acquired")
    finally:
        release.set()
        thread.join(5)
    assert order == ["holder released", "waiter acquired"]


def test_lock_part_of_an_aborted_upload_fails(locking: PartLocking) -> None:
    assert isinstance(locking, Storage)
    upload_id = locking.begin(KEY)
    locking.abort(upload_id)
    with pytest.raises(FileNotFoundError), locking.lock_part(upload_id, 0, timeout=0.1):
        pass


# Concatenation: stored files joined end to end into an upload's file.


def stored(backend: Backend, key: str, data: bytes, tmp_path: Path) -> None:
    """Store `data` as `key` the two ways a source comes: an upload's parts, or put_file."""
    if len(data) > backend.part:
        upload_id = backend.storage.begin(key)
        parts = put_all(backend, upload_id, data)
        backend.storage.complete(upload_id, key, parts)
    else:
        source = tmp_path / "source"
        source.write_bytes(data)
        backend.storage.put_file(key, source)


def sources_of(backend: Backend, tmp_path: Path, sizes: list[int]) -> dict[str, bytes]:
    """Stored sources of `sizes` bytes, by key, the keys in an order that is not theirs
    by name (so a sorted listing would misplace them)."""
    names = ["partials/c", "partials/a", "partials/d", "partials/b"]
    sources = {}
    for n, size in enumerate(sizes):
        sources[names[n]] = data_of(size, seed=20 + n)
        stored(backend, names[n], sources[names[n]], tmp_path)
    return sources


def test_concatenate_joins_the_sources_in_order(backend: Backend, tmp_path: Path) -> None:
    # One source an upload stored in parts, then put_file ones; the last one short.
    sources = sources_of(backend, tmp_path, [backend.part + 3, backend.part, 17])
    upload_id = backend.storage.begin(KEY)
    backend.storage.concatenate(upload_id, KEY, list(sources))
    assert read(backend.storage, KEY) == b"".join(sources.values())
    assert backend.keys() == {KEY}  # the sources are removed
    assert backend.uploads() == set()


def test_concatenate_of_one_source_is_that_file(backend: Backend, tmp_path: Path) -> None:
    sources = sources_of(backend, tmp_path, [backend.part + 5])
    upload_id = backend.storage.begin(KEY)
    backend.storage.concatenate(upload_id, KEY, list(sources))
    assert read(backend.storage, KEY) == sources["partials/c"]
    assert backend.keys() == {KEY}


@pytest.mark.parametrize("sizes", [[0, 0], [0, 1, 0]])
def test_empty_sources_add_nothing(backend: Backend, tmp_path: Path, sizes: list[int]) -> None:
    sources = sources_of(backend, tmp_path, [backend.part, *sizes])
    upload_id = backend.storage.begin(KEY)
    backend.storage.concatenate(upload_id, KEY, list(sources))
    assert read(backend.storage, KEY) == b"".join(sources.values())
    # No bytes at all make an empty file.
    empty = sources_of(backend, tmp_path, sizes)
    upload_id = backend.storage.begin("jobs/2/input.csv")
    backend.storage.concatenate(upload_id, "jobs/2/input.csv", list(empty))
    assert read(backend.storage, "jobs/2/input.csv") == b"".join(empty.values())
    assert backend.keys() == {KEY, "jobs/2/input.csv"}


def test_concatenate_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    sources = sources_of(backend, tmp_path, [backend.part, 10])
    upload_id = backend.storage.begin(KEY)
    backend.storage.concatenate(upload_id, KEY, list(sources))
    # A worker that runs it again (after a crash, say) finds it done: sources gone is fine.
    backend.storage.concatenate(upload_id, KEY, list(sources))
    assert read(backend.storage, KEY) == b"".join(sources.values())
    assert backend.keys() == {KEY}
    assert backend.uploads() == set()


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ([], "at least one source"),
        (["partials/c", "partials/a", "partials/c"], "twice"),
        (["partials/c", KEY], "names it as a source"),
    ],
)
def test_concatenate_refuses_sources_that_make_no_sense(
    backend: Backend, tmp_path: Path, names: list[str], why: str
) -> None:
    sources = sources_of(backend, tmp_path, [5, 6])
    upload_id = backend.storage.begin(KEY)
    with pytest.raises(ValueError, match=why):
        backend.storage.concatenate(upload_id, KEY, names)
    # Nothing happened: the sources are there, and the upload still takes the right ones.
    assert backend.keys() == set(sources)
    assert upload_id in backend.uploads()
    backend.storage.concatenate(upload_id, KEY, list(sources))
    assert read(backend.storage, KEY) == b"".join(sources.values())


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_concatenate_of_a_missing_source_stores_nothing(
    backend: Backend, tmp_path: Path, missing: int
) -> None:
    sources = sources_of(backend, tmp_path, [backend.part, backend.part, 9])
    names = list(sources)
    backend.storage.delete(names[missing])
    upload_id = backend.storage.begin(KEY)
    with pytest.raises(FileNotFoundError, match=names[missing]):
        backend.storage.concatenate(upload_id, KEY, names)
    present = {name: data for n, (name, data) in enumerate(sources.items()) if n != missing}
    assert backend.keys() == set(present)
    for name, data in present.items():
        assert read(backend.storage, name) == data
    assert upload_id in backend.uploads()
    # Once the source is there, the same upload completes.
    stored(backend, names[missing], sources[names[missing]], tmp_path)
    backend.storage.concatenate(upload_id, KEY, names)
    assert read(backend.storage, KEY) == b"".join(sources.values())


def test_concatenate_into_an_unknown_upload_fails(backend: Backend, tmp_path: Path) -> None:
    sources = sources_of(backend, tmp_path, [3, 4])
    upload_id = backend.storage.begin(KEY)
    backend.storage.abort(upload_id)
    with pytest.raises(FileNotFoundError):
        backend.storage.concatenate(upload_id, KEY, list(sources))
    assert backend.keys() == set(sources)
