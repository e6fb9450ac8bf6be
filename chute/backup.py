"""`chute backup DEST`: a copy of the embedded deployment's data dir, taken while it runs.

The databases are copied with SQLite's online backup (a consistent snapshot, while
uploads and jobs go on), then the files. In that order, every file the copied database
names is in the copy: stored files are written before the row that names them and never
change after; a file that comes after the snapshot is copied too and named by nothing.
DEST is then a data dir: restoring is serving it (`CHUTE_DATA_DIR=DEST chute serve`), or
copying it where the data dir was.

Scale-out deployments keep nothing in the data dir: back up PostgreSQL and the bucket
with their own tools.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from chute.config import Settings

DATABASES = ("chute.db", "queue.db")


class BackupError(Exception):
    """Why no backup was taken, in plain words."""


@dataclass(frozen=True)
class Copied:
    databases: list[str]
    files: int
    bytes: int


def backup(settings: Settings, dest: Path) -> Copied:
    data_dir = settings.data_dir.resolve()
    # The database and the files in their embedded places, in the data dir.
    if settings.database_url or settings.storage_url:
        raise BackupError(
            "chute backup copies the embedded deployment (SQLite and files in the data "
            "dir); back up PostgreSQL and the S3 bucket with their own tools"
        )
    if not (data_dir / "chute.db").exists():
        raise BackupError(f"{data_dir} holds no Chute database")
    dest = dest.resolve()
    if dest == data_dir or dest.is_relative_to(data_dir):
        raise BackupError("the backup must go outside the data dir")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    copied = [name for name in DATABASES if _copy_database(data_dir / name, dest / name)]
    files = Path(urlparse(settings.resolved_storage_url).path)
    count, size = _copy_tree(files, dest / files.relative_to(data_dir))
    return Copied(copied, count, size)


def _copy_database(source: Path, target: Path) -> bool:
    if not source.exists():
        return False
    # Read-only: a backup never changes what it copies.
    with (
        sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60) as src,
        sqlite3.connect(target) as out,
    ):
        src.backup(out)
        # One self-contained file: the copy needs no -wal beside it.
        out.execute("PRAGMA journal_mode=DELETE")
    src.close()
    out.close()
    return True


def _copy_tree(source: Path, target: Path) -> tuple[int, int]:
    count = size = 0
    for root, _dirs, names in os.walk(source):
        here = Path(root)
        into = target / here.relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".tmp"):
                continue  # a part still being written: never a recorded part
            try:
                shutil.copy2(here / name, into / name)
            except FileNotFoundError:
                continue  # removed meanwhile (a job deleted): the copied database may
                # still name it, as the data dir did a moment before
            count += 1
            size += (into / name).stat().st_size
    return count, size
