"""Helpers of the storage tests: file bytes, writing a part, reading a file back."""

from __future__ import annotations

import hashlib

from chute.storage import Part, PlacedPart, Storage


def data_of(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ from part to part (so a misplaced part shows)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def put(
    storage: Storage,
    upload_id: str,
    index: int,
    data: bytes,
    *,
    part_size: int,
    aside: bool = False,
    last: bool | None = None,
) -> PlacedPart:
    """Write and commit part `index` of an upload whose parts have `part_size` bytes, in
    several writes, at its offset or (`aside`) kept aside; the part as `complete` takes it."""
    offset = index * part_size
    part = Part(
        index=index,
        offset=None if aside else offset,
        most=len(data),
        size=len(data),
        last=last,
        part_size=part_size,
    )
    writer = storage.open_part(upload_id, part)
    try:
        piece = max(1, -(-len(data) // 5))
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
        writer.commit()
    finally:
        writer.abort()  # after a commit a no-op, as the upload path's exit does
    return PlacedPart(index, offset, len(data), placed=not aside)


def read(storage: Storage, key: str) -> bytes:
    with storage.open(key) as f:
        return f.read()
