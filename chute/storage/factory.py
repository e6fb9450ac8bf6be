from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from chute.config import Settings
from chute.storage.base import Storage
from chute.storage.local import LocalStorage
from chute.storage.memory import storage_at


def make_storage(settings: Settings) -> Storage:
    """The backend that `settings.resolved_storage_url` names: file://, s3://, or memory://
    for tests (`chute.storage.memory`)."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        from chute.storage.s3 import S3Storage  # boto3 is imported only when it is used

        return S3Storage.from_settings(settings)
    if parsed.scheme == "memory":
        return storage_at(url)
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")
