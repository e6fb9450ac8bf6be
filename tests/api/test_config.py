"""`GET /api/config`: public, the defaults, the configured values; bad settings stop `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, ServerFactory, free_port

MiB = 1024 * 1024


def test_config_is_public_with_the_defaults(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.get("/api/config")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "chunk_size": 104857600,
        "max_chunk_bytes": 256 * MiB,
        "max_total_chunks": 100_000,
        "max_file_bytes": 1024**4,
        "parallel_chunks": 3,
    }


def test_config_shows_the_configured_values(make_server: ServerFactory) -> None:
    srv = make_server(
        CHUTE_CHUNK_SIZE=str(5 * MiB),
        CHUTE_MAX_CHUNK_BYTES=str(8 * MiB),
        CHUTE_MAX_TOTAL_CHUNKS="1234",
        CHUTE_MAX_FILE_BYTES=str(3 * 1024**3),
        CHUTE_PARALLEL_CHUNKS="7",
    )
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        answer = http.get("/api/config")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "chunk_size": 5 * MiB,
        "max_chunk_bytes": 8 * MiB,
        "max_total_chunks": 1234,
        "max_file_bytes": 3 * 1024**3,
        "parallel_chunks": 7,
    }


def run_serve(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess[str], int]:
    port = free_port()
    env = {
        **os.environ,
        "CHUTE_DATA_DIR": str(tmp_path / "data"),
        "CHUTE_PORT": str(port),
        **settings,
    }
    result = subprocess.run(
        [sys.executable, "-m", "chute", "serve", "--no-worker"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,  # a server that started would never return: the test fails here
        start_new_session=True,
    )
    return result, port


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        pytest.param(
            {"CHUTE_CHUNK_SIZE": str(300 * MiB)},
            "CHUTE_CHUNK_SIZE must not exceed CHUTE_MAX_CHUNK_BYTES",
            id="chunk-size-over-max",
        ),
        pytest.param(
            {"CHUTE_CHUNK_SIZE": str(2 * MiB), "CHUTE_MAX_CHUNK_BYTES": str(MiB)},
            "CHUTE_CHUNK_SIZE must not exceed CHUTE_MAX_CHUNK_BYTES",
            id="max-lowered-below-chunk-size",
        ),
        pytest.param({"CHUTE_CHUNK_SIZE": "lots"}, "CHUTE_CHUNK_SIZE", id="not-a-number"),
        pytest.param({"CHUTE_PARALLEL_CHUNKS": "0"}, "CHUTE_PARALLEL_CHUNKS", id="out-of-range"),
        pytest.param({"CHUTE_STORAGE_URL": "ftp://x"}, "CHUTE_STORAGE_URL", id="storage-url"),
    ],
)
def test_invalid_settings_stop_serve_with_a_clear_message(
    tmp_path: Path, settings: dict[str, str], mentions: str
) -> None:
    result, port = run_serve(tmp_path, **settings)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert mentions in output
    # A message for a person, not a crash.
    assert "Traceback" not in output
    assert "Uvicorn running" not in output
    # Nothing was started or created.
    assert not (tmp_path / "data").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=1)
