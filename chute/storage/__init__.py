"""Where chunk and file bytes live: one interface, one module per backend."""

from chute.storage.base import PartLocking, PartWriter, StagedPart, Storage, StorageFull
from chute.storage.factory import make_storage

__all__ = ["PartLocking", "PartWriter", "StagedPart", "Storage", "StorageFull", "make_storage"]
