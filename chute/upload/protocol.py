"""The chunk protocol's form fields: names, aliases and the checks each value must pass."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chute.config import Settings
from chute.errors import ChuteError, Problem, invalid
from chute.names import name_problem

# camelCase aliases keep the seed's sample client working unchanged.
ALIASES = {"chunkIndex": "chunk_index", "totalChunks": "total_chunks"}
KNOWN = {"chunk_index", "total_chunks", "chunk_sha256", "chunk_size", "file_size"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ChunkRequest:
    job_id: int
    index: int
    total_chunks: int
    sha256: str | None
    chunk_size: int | None
    file_size: int | None
    file_name: str | None

    @property
    def is_last(self) -> bool:
        return self.index == self.total_chunks - 1


def add_field(fields: dict[str, str], name: str, value: str) -> None:
    """Keep a field under its canonical name; the same field twice is an error."""
    name = ALIASES.get(name, name)
    if name not in KNOWN:
        return  # unknown fields are ignored, as HTML forms may add their own
    if name in fields:
        raise invalid(f"the field {name} was sent twice")
    fields[name] = value.strip()


def has_position(fields: dict[str, str]) -> bool:
    """True once the fields that say where the chunk goes have arrived."""
    return "chunk_index" in fields and "total_chunks" in fields


def _int(fields: dict[str, str], name: str, *, required: bool) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        if required:
            raise invalid(f"the field {name} is missing")
        return None
    # isascii: str.isdigit() also takes '²' and other digits int() reads otherwise or not at all.
    if not (raw.isascii() and raw.isdigit()):
        raise invalid(f"the field {name} must be a whole number, not {raw[:40]!r}")
    return int(raw)


def parse_chunk_request(
    job_id: int, fields: dict[str, str], file_name: str | None, settings: Settings
) -> ChunkRequest:
    """Check every field on its own and against the server's limits (422 and 413)."""
    index = _int(fields, "chunk_index", required=True)
    total = _int(fields, "total_chunks", required=True)
    assert index is not None and total is not None
    if not 1 <= total <= settings.max_total_chunks:
        raise invalid(f"total_chunks must be between 1 and {settings.max_total_chunks}")
    if not 0 <= index < total:
        raise invalid(f"chunk_index must be between 0 and {total - 1} (total_chunks - 1)")
    sha = fields.get("chunk_sha256") or None
    if sha is not None:
        sha = sha.lower()
        if not _SHA256.fullmatch(sha):
            raise invalid("chunk_sha256 must be 64 hexadecimal digits")
    chunk_size = _int(fields, "chunk_size", required=False)
    if chunk_size is not None:
        if chunk_size < 1:
            raise invalid("chunk_size must be at least 1")
        if chunk_size > settings.max_chunk_bytes:
            raise ChuteError(Problem.CHUNK_TOO_LARGE, limit=settings.max_chunk_bytes)
    file_size = _int(fields, "file_size", required=False)
    if file_size is not None:
        if file_size < 1:
            raise invalid("file_size must be at least 1")
        if file_size > settings.max_file_bytes:
            raise ChuteError(Problem.FILE_TOO_LARGE, limit=settings.max_file_bytes)
        if total > file_size:
            raise invalid("total_chunks is larger than file_size: every chunk has a byte")
    # No name (an empty filename) is allowed: the seed's sample may send a Blob unnamed.
    if file_name and (problem := name_problem(file_name)) is not None:
        raise invalid(f"the file part's filename {problem}")
    return ChunkRequest(job_id, index, total, sha, chunk_size, file_size, file_name or None)
