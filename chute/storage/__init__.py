"""Where chunk and file bytes live: one interface, one module per backend."""

from chute.storage.base import (
    LocalPaths,
    Part,
    PartLocking,
    PartRefused,
    PartWriter,
    PlacedPart,
    Storage,
    StorageError,
    StorageFull,
)
from chute.storage.factory import make_storage

__all__ = [
    "LocalPaths",
    "Part",
    "PartLocking",
    "PartRefused",
    "PartWriter",
    "PlacedPart",
    "Storage",
    "StorageError",
    "StorageFull",
    "make_storage",
]
