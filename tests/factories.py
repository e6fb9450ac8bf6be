"""Builders for test data: CSV bytes, chunk form fields."""

from __future__ import annotations

import hashlib
from functools import cache


def csv_bytes(rows: int, seed: int = 0) -> bytes:
    lines = [b"id,name,amount\n"]
    lines += [f"{i},name-{seed}-{i},{i * 7 % 1000}.{i % 100:02d}\n".encode() for i in range(rows)]
    return b"".join(lines)


@cache
def csv_of_size(size: int, seed: int = 0) -> bytes:
    """The fewest whole rows of `csv_bytes` that make at least `size` bytes (cached: the
    tests on S3 ask for files of several 5 MiB chunks)."""
    rows = size // 20 + 1
    while len(data := csv_bytes(rows, seed)) < size:
        rows *= 2
    return data[: data.index(b"\n", size - 1) + 1]


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_fields(
    index: int, total: int, data: bytes | None = None, **extra: object
) -> dict[str, str]:
    fields = {"chunk_index": str(index), "total_chunks": str(total)}
    if data is not None:
        fields["chunk_sha256"] = sha256(data)
    fields.update({k: str(v) for k, v in extra.items()})
    return fields


# Terminal escape sequences (set the window title, clear the screen) that data from a
# server must never pass on to a terminal or a page.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J"
