from __future__ import annotations

from fastapi import APIRouter

from chute.api.deps import RuntimeDep
from chute.api.schemas import ServerConfig

router = APIRouter(prefix="/api", tags=["config"])


@router.get("/config")
def server_config(rt: RuntimeDep) -> ServerConfig:
    s = rt.settings
    return ServerConfig(
        chunk_size=s.chunk_size,
        max_chunk_bytes=s.max_chunk_bytes,
        # The storage may take fewer parts in one file (S3: 10,000).
        max_total_chunks=min(s.max_total_chunks, rt.storage.max_parts or s.max_total_chunks),
        max_file_bytes=s.max_file_bytes,
        parallel_chunks=s.parallel_chunks,
    )
