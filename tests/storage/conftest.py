"""S3 storage for the storage tests: one bucket and one pair of boto3 clients per module,
a prefix of its own per test (SeaweedFS takes seconds to make a bucket, boto3 most of one
to make a client)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from chute.storage.s3 import S3Storage
from tests.conftest import storage_of
from tests.s3_support import SeaweedFS


@pytest.fixture(scope="module")
def s3_shared(seaweedfs: SeaweedFS) -> Iterator[S3Storage]:
    """S3 storage on a bucket of the module's, opened as a server opens it."""
    bucket = seaweedfs.new_bucket()
    storage = storage_of(seaweedfs.env(bucket))
    assert isinstance(storage, S3Storage)
    yield storage
    seaweedfs.remove_bucket(bucket)


@pytest.fixture
def s3_storage(s3_shared: S3Storage) -> S3Storage:
    """S3 storage under a prefix of its own, in the module's bucket."""
    prefix = f"t{secrets.token_hex(6)}/"
    shared = s3_shared
    return S3Storage(shared.client, shared.part_client, shared.bucket, prefix, shared.min_part_size)
