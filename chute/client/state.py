"""What the command line keeps between runs: tokens, and which job each file went to.

- Tokens: `$XDG_CONFIG_HOME/chute/credentials.json` (default `~/.config`), mode 0600
  in a 0700 directory: `{"server": last signed-in server, "tokens": {server: token}}`.
- Uploads: `$XDG_STATE_HOME/chute/uploads.json` (default `~/.local/state`), one entry
  per (server, absolute path, size, mtime): the job that file is being sent to. A
  re-run of `chute upload FILE` finds its job there; a file changed since (other
  size or mtime) is another file and gets a new job.

Files are replaced atomically (write a temporary file, then rename), under a lock
file, so two commands at once neither lose an entry nor read half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chute"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chute"


class JsonFile:
    """A small JSON object on disk, private to the user, updated under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged file is no reason to stop an upload; it is rewritten on update.
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Yield the contents; what the caller leaves in it is written back."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            yield data
            self._write(data)
        finally:
            os.close(fd)

    def _write(self, data: dict[str, Any]) -> None:
        # mkstemp creates the file 0600 from the start: a token is never readable by others.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


class Credentials:
    """Tokens per server, and the server last signed in to."""

    def __init__(self, directory: Path | None = None) -> None:
        self.file = JsonFile((directory or config_dir()) / "credentials.json")

    def save(self, server: str, token: str) -> Path:
        with self.file.update() as data:
            data.setdefault("tokens", {})[server] = token
            data["server"] = server
        return self.file.path

    def token(self, server: str) -> str | None:
        token = self.file.read().get("tokens", {}).get(server)
        return token if isinstance(token, str) else None

    def default_server(self) -> str | None:
        server = self.file.read().get("server")
        return server if isinstance(server, str) else None


# How long a file's job is remembered: far past the server's default upload expiry
# (1 day), so a re-run finds a finished job and does not send the file again.
KEEP = timedelta(days=30)


def _age(at: str, now: datetime) -> timedelta:
    try:
        return now - datetime.fromisoformat(at)
    except ValueError:
        return KEEP * 2


class UploadRecords:
    """Which job a file (server, absolute path, size, mtime) is being sent to."""

    def __init__(self, directory: Path | None = None) -> None:
        self.file = JsonFile((directory or state_dir()) / "uploads.json")

    @staticmethod
    def key(server: str, path: Path) -> str:
        stat = path.stat()
        return json.dumps([server, str(path.resolve()), stat.st_size, stat.st_mtime_ns])

    def job_for(self, server: str, path: Path) -> int | None:
        entry = self.file.read().get(self.key(server, path))
        if isinstance(entry, dict) and isinstance(entry.get("job_id"), int):
            return int(entry["job_id"])
        return None

    def remember(self, server: str, path: Path, job_id: int) -> None:
        key = self.key(server, path)
        now = datetime.now(UTC)
        with self.file.update() as data:
            # Entries older than any upload's expiry only grow the file: drop them.
            for old, entry in list(data.items()):
                at = entry.get("at") if isinstance(entry, dict) else None
                if not isinstance(at, str) or _age(at, now) > KEEP:
                    del data[old]
            data[key] = {"job_id": job_id, "at": now.isoformat(timespec="seconds")}

    def forget(self, server: str, path: Path) -> None:
        key = self.key(server, path)
        with self.file.update() as data:
            data.pop(key, None)
