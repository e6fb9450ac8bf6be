"""Local-disk storage: each upload is one preallocated file, written at each part's offset.

Layout under the root:
    uploads/<upload_id>/data          the assembled file, parts written in place
    uploads/<upload_id>/part-<i>      a part kept aside until the chunk size is known
    uploads/<upload_id>/locks         byte i locked while part i is being written
    uploads/<upload_id>/concat.json   a concatenation's manifest: its key and sources
    uploads/<upload_id>/concat        a concatenation's first source, the others appended
    objects/<key>                     completed files: `data` (or `concat`) renamed here

Completing an upload is a rename, not a copy (plus a copy of the rare parts kept aside).
A concatenation renames its first source and has the kernel append the others
(copy_file_range: no byte through Chute, and a reflink where the file system can).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from chute.storage.base import (
    HeldForGood,
    LocalPaths,
    Part,
    PartLocking,
    PartWriter,
    PlacedPart,
    Storage,
    StorageFull,
    check_sources,
    file_size,
)

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# A concatenation's files in its upload's folder (see `LocalStorage.concatenate`).
_MANIFEST = "concat.json"
_JOINED = "concat"

# Start writeback of what was written every so often, so the fdatasync at the end of a
# part only waits for the tail instead of the whole part.
_WRITEBACK_EVERY = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2

_sync_file_range: Any = None
try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (OSError, AttributeError):  # not Linux: the final fdatasync does all the work
    _sync_file_range = None

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_fallocate: Any = None
try:
    _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
except (OSError, AttributeError):  # not Linux: room a failed preallocation took stays
    _fallocate = None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _holes(fd: int, start: int, length: int) -> list[tuple[int, int]]:
    """The ranges of [start, start + length) that hold nothing on disk yet."""
    holes: list[tuple[int, int]] = []
    end = start + length
    size = os.fstat(fd).st_size
    position = start
    while position < min(end, size):
        hole = os.lseek(fd, position, os.SEEK_HOLE)  # the file's size if none before it
        if hole >= end:
            return holes
        try:
            position = min(os.lseek(fd, hole, os.SEEK_DATA), end)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            position = end  # no data after the hole
        holes.append((hole, position))
    if position < end:
        holes.append((max(position, size), end))
    return holes


@contextlib.contextmanager
def _undo_preallocation(fd: int, start: int, length: int) -> Iterator[None]:
    """Give back the room a preallocation of [start, start + length) took if it fails: ext4
    keeps the blocks it allocated before it ran out of room, and StorageFull means nothing
    of the part is kept. Only what were holes before is punched out again, so no byte
    already written there is lost."""
    holes = _holes(fd, start, length) if _fallocate is not None else []
    try:
        yield
    except BaseException:
        for hole_start, hole_end in holes:
            # Best effort: a file system that cannot punch holes keeps the room.
            _fallocate(
                fd,
                _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                hole_start,
                hole_end - hole_start,
            )
        raise


@contextlib.contextmanager
def _map_no_space() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise StorageFull(str(exc)) from exc
        raise


class _FileRangeWriter:
    """Writes a part into `fd` from `start`, starting writeback as it goes."""

    def __init__(self, fd: int, start: int, on_commit: Path | None, final: Path | None) -> None:
        self._fd = fd
        self._start = start
        self._pos = start
        self._synced = start
        # For a part kept aside: the temporary file and the name it takes once durable.
        self._tmp = on_commit
        self._final = final

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        with _map_no_space():
            while view:
                n = os.pwrite(self._fd, view, self._pos)
                self._pos += n
                view = view[n:]
        if self._pos - self._synced >= _WRITEBACK_EVERY:
            _start_writeback(self._fd, self._synced, self._pos - self._synced)
            self._synced = self._pos

    def commit(self) -> None:
        with _map_no_space():
            if self._tmp is not None and self._final is not None:
                os.ftruncate(self._fd, self._pos - self._start)
                os.fdatasync(self._fd)
                os.replace(self._tmp, self._final)
                _fsync_dir(self._final.parent)
            else:
                os.fdatasync(self._fd)
            # The bytes are on disk and nobody reads them until the job runs: keep them
            # out of the page cache, whose growth slows every later write on a busy host.
            os.posix_fadvise(self._fd, self._start, self._pos - self._start, os.POSIX_FADV_DONTNEED)
        self._close()

    def abort(self) -> None:
        self._close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStorage(Storage, PartLocking, LocalPaths):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError("bad upload id")
        return self.root / "uploads" / upload_id

    def _object(self, key: str) -> Path:
        path = (self.root / "objects" / key).resolve()
        if not path.is_relative_to((self.root / "objects").resolve()):
            raise ValueError("bad key")
        return path

    def begin(self, key: str) -> str:
        # The key is only needed at `complete`, which is given it again.
        upload_id = secrets.token_hex(16)
        directory = self._upload_dir(upload_id)
        directory.mkdir(parents=True)
        for name in ("data", "locks"):
            (directory / name).touch()
        _fsync_dir(directory)
        _fsync_dir(directory.parent)
        return upload_id

    def open_part(self, upload_id: str, part: Part) -> PartWriter:
        directory = self._upload_dir(upload_id)
        if part.offset is None:
            # A fresh temporary name: bytes of a request that dies never look like a part.
            tmp = directory / f"part-{part.index}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            writer = _FileRangeWriter(fd, 0, tmp, directory / f"part-{part.index}")
            start = 0
        else:
            # O_CREAT is left out on purpose: an aborted upload's directory is gone, and
            # a late request must fail rather than bring a stray file back.
            fd = os.open(directory / "data", os.O_WRONLY)
            writer = _FileRangeWriter(fd, part.offset, None, None)
            start = part.offset
        reserve = part.room
        try:
            with _map_no_space():
                if reserve > 0:
                    with _undo_preallocation(fd, start, reserve):
                        os.posix_fallocate(fd, start, reserve)
        except BaseException:
            writer.abort()
            raise
        return writer

    def complete(self, upload_id: str, key: str, parts: Sequence[PlacedPart]) -> None:
        directory = self._upload_dir(upload_id)
        final = self._object(key)
        data = directory / "data"
        if not data.exists():
            if final.exists():
                # Completed before (perhaps by a worker that died before its cleanup).
                shutil.rmtree(directory, ignore_errors=True)
                return
            raise FileNotFoundError(f"upload {upload_id} is neither pending nor complete")
        with _map_no_space():
            fd = os.open(data, os.O_WRONLY)
            try:
                for part in parts:
                    if not part.placed:
                        _copy_into(directory / f"part-{part.index}", fd, part.offset)
                os.ftruncate(fd, file_size(parts))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(data, final)
            _fsync_dir(final.parent)
        shutil.rmtree(directory, ignore_errors=True)

    def concatenate(self, upload_id: str, key: str, sources: Sequence[str]) -> None:
        # Crash safety rests on two files in the upload's folder, written before any source
        # is touched and removed only once `key` is in place (with the folder):
        # - `concat.json`, the manifest: the key, the sources, and the first source's size
        #   and inode. It tells a re-run what "done" looks like and where the first source
        #   ends, so whatever a run that died midway appended is cut off and appended again.
        # - `concat`, a fixed name the first source is renamed to, so a re-run finds it
        #   although its own name is gone. The other sources stay where they are until
        #   the file is in place, so every byte is always somewhere a re-run can read it.
        listed = check_sources(key, sources)
        directory = self._upload_dir(upload_id)
        final = self._object(key)
        paths = [self._object(source) for source in listed]
        manifest_path = directory / _MANIFEST
        joined = directory / _JOINED
        if not directory.exists():
            if final.exists():
                return  # concatenated before
            raise FileNotFoundError(f"upload {upload_id} is neither pending nor complete")
        manifest = _read_manifest(manifest_path)
        if manifest is None and not (directory / "data").exists():
            # What a completed upload's cleanup left (see `_remove_upload`).
            if final.exists():
                shutil.rmtree(directory, ignore_errors=True)
                return
            raise FileNotFoundError(f"upload {upload_id} is neither pending nor complete")
        if manifest is None:
            if _has_parts(directory):
                raise ValueError(f"upload {upload_id!r} has parts: it cannot be a concatenation")
            manifest = _Manifest(key, listed, *_size_and_inode(paths[0], listed[0]))
            for path, source in zip(paths[1:], listed[1:], strict=True):
                _size_and_inode(path, source)  # each must be there before anything moves
            _write_durably(manifest_path, manifest.dumps())
        elif (manifest.key, manifest.sources) != (key, listed):
            raise ValueError(f"upload {upload_id!r} is the concatenation of other sources")

        if not joined.exists():
            if _is_file(final, manifest.first_inode):
                # Renamed into place by a run that died before its cleanup.
                _remove_sources(paths[1:])
                _remove_upload(directory)
                return
            _size_and_inode(paths[0], listed[0])  # FileNotFoundError naming the source
            os.rename(paths[0], joined)
            _fsync_dir(directory)
            _fsync_dir(paths[0].parent)
        try:
            with _map_no_space():
                fd = os.open(joined, os.O_WRONLY)
                try:
                    end = manifest.first_size
                    os.ftruncate(fd, end)  # what a run that died midway appended
                    for path in paths[1:]:
                        end += _copy_into(path, fd, end)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        except Exception:
            # Nothing is stored: the first source goes back, as it was, where it was. If
            # that fails too, the manifest stays and a re-run (or abort) still finds it.
            with contextlib.suppress(OSError):
                _put_back(directory, manifest, paths[0])
            raise
        with _map_no_space():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(joined, final)
            _fsync_dir(final.parent)
        _remove_sources(paths[1:])
        _remove_upload(directory)

    def abort(self, upload_id: str) -> None:
        directory = self._upload_dir(upload_id)
        manifest = _read_manifest(directory / _MANIFEST)
        if manifest is not None:
            # A concatenation that died midway: its first source is not the upload's.
            _put_back(directory, manifest, self._object(manifest.sources[0]))
        shutil.rmtree(directory, ignore_errors=True)

    def open(self, key: str) -> BinaryIO:
        return self._object(key).open("rb")

    def path(self, key: str) -> Path:
        """Where a stored file is on disk (for readers that want a path, like DuckDB)."""
        return self._object(key)

    def put_file(self, key: str, source: Path) -> None:
        final = self._object(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with _map_no_space():
            with source.open("rb+") as f:
                os.fdatasync(f.fileno())
            try:
                os.replace(source, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Another file system: copy beside the target, then rename into place.
                tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
                shutil.copyfile(source, tmp)
                with tmp.open("rb+") as f:
                    os.fdatasync(f.fileno())
                os.replace(tmp, final)
            _fsync_dir(final.parent)

    def delete(self, key: str) -> None:
        self._object(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if not prefix.endswith("/") or not prefix.strip("/"):
            raise ValueError("a prefix names a folder below the root and ends with /")
        shutil.rmtree(self._object(prefix.rstrip("/")), ignore_errors=True)

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    @contextlib.contextmanager
    def lock_part(self, upload_id: str, index: int, timeout: float) -> Iterator[HeldForGood]:
        # An open-file-description lock on byte `index`: it excludes other requests of
        # this process as well as of other processes, and the kernel drops it when its
        # holder dies, so a killed request never leaves a part locked.
        fd = os.open(self._upload_dir(upload_id) / "locks", os.O_RDWR)
        try:
            deadline = time.monotonic() + timeout
            while not _try_lock(fd, index, fcntl.F_WRLCK):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"part {index} is locked")
                time.sleep(0.02)
            yield HeldForGood()
        finally:
            os.close(fd)  # releases the lock


def _try_lock(fd: int, index: int, kind: int) -> bool:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding.
    request = struct.pack("hhqqii", kind, os.SEEK_SET, index, 1, 0, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _copy_into(source: Path, fd: int, offset: int) -> int:
    """Copy the file `source` into `fd` at `offset`, in the kernel; its size."""
    with source.open("rb") as src:
        remaining = os.fstat(src.fileno()).st_size
        position = 0
        while remaining:
            n = os.copy_file_range(src.fileno(), fd, remaining, position, offset + position)
            if n == 0:
                raise OSError(errno.EIO, f"short copy from {source}")
            position += n
            remaining -= n
    return position


@dataclass(frozen=True)
class _Manifest:
    """What a concatenation is, written before it touches a source."""

    key: str
    sources: list[str]
    first_size: int
    first_inode: int

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def _read_manifest(path: Path) -> _Manifest | None:
    try:
        return _Manifest(**json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None


def _write_durably(path: Path, content: bytes) -> None:
    """Write a file whole or not at all: beside it, made durable, then renamed."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    with _map_no_space():
        with tmp.open("wb") as f:
            f.write(content)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _size_and_inode(path: Path, key: str) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{key!r} is not stored") from None
    return stat.st_size, stat.st_ino


def _is_file(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except FileNotFoundError:
        return False


def _has_parts(directory: Path) -> bool:
    data = directory / "data"
    if data.exists() and data.stat().st_size > 0:
        return True
    return any(p.name.startswith("part-") for p in directory.iterdir())


def _remove_sources(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in paths}:
        _fsync_dir(folder)


def _remove_upload(directory: Path) -> None:
    """Remove a concatenated upload's folder, `data` first and the manifest next: a re-run
    that finds the folder finds the manifest, or no `data`, which says the upload is
    complete (as `complete` leaves it), never neither."""
    (directory / "data").unlink(missing_ok=True)
    (directory / _MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    _fsync_dir(directory.parent)


def _put_back(directory: Path, manifest: _Manifest, first: Path) -> None:
    """Undo a concatenation that did not finish: the first source, cut back to its own
    bytes, returns to its place, and the manifest goes. Each step can be redone, so a
    crash in between leaves a state that concatenate (or this) picks up."""
    joined = directory / _JOINED
    if joined.exists():
        with open(joined, "rb+") as f:
            os.ftruncate(f.fileno(), manifest.first_size)
            os.fsync(f.fileno())
        first.parent.mkdir(parents=True, exist_ok=True)
        os.rename(joined, first)
        _fsync_dir(first.parent)
        _fsync_dir(directory)
    (directory / _MANIFEST).unlink(missing_ok=True)
    _fsync_dir(directory)
