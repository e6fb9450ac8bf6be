from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from chute.storage.base import Storage
from chute.storage.local import LocalStorage


def make_storage(url: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")
