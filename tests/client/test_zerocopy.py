"""Chunks sent by sendfile (`chute/client/zerocopy.py`) against a real `chute serve`."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.client import Client
from chute.client.multipart import ChunkForm
from chute.client.zerocopy import ChunkConnection, FileRegion
from tests.client_support import KiB, stored_sha256, token_of
from tests.conftest import Server, serving
from tests.factories import csv_bytes, split

CHUNK = 64 * KiB
LIMIT = 1024 * KiB


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"CHUTE_CHUNK_SIZE": str(CHUNK), "CHUTE_MAX_CHUNK_BYTES": str(LIMIT)}
    with serving(tmp_path_factory.mktemp("zerocopy"), **settings) as server:
        yield server


def connection(server: Server) -> ChunkConnection:
    return ChunkConnection("127.0.0.1", server.port, connect=5, write=30, read=30)


def post_chunk(
    conn: ChunkConnection, token: str, job_id: int, path: Path, index: int, total: int
) -> tuple[int, dict[str, object]]:
    """Chunk `index` of `path` (64 KiB chunks) by sendfile, as the uploader sends it."""
    size = path.stat().st_size
    offset = index * CHUNK
    length = min(CHUNK, size - offset)
    with path.open("rb") as f:
        f.seek(offset)
        digest = hashlib.sha256(f.read(length)).hexdigest()
        fields = {"chunk_index": str(index), "total_chunks": str(total), "chunk_sha256": digest}
        form = ChunkForm(fields, path.name, length)
        answer = conn.post(
            f"/api/job/{job_id}/upload-data",
            {"Content-Type": form.content_type, "Authorization": f"Bearer {token}"},
            form.head,
            FileRegion(f.fileno(), offset, length),
            form.tail,
        )
    return answer.status_code, answer.json()


@pytest.mark.parametrize("zero_copy", [True, False], ids=["sendfile", "httpx"])
def test_both_ways_of_sending_store_the_same_file(
    small_chunks: Server, tmp_path: Path, zero_copy: bool
) -> None:
    data = csv_bytes(20_000, seed=3)
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    user = small_chunks.client()
    with Client(small_chunks.url, token_of(user), zero_copy=zero_copy) as chute:
        assert (chute.zero_copy_address() is not None) is zero_copy
        job = chute.create_job("both ways")
        summary = chute.upload(job.id, path, parallel=3)
    assert summary.sent_chunks == len(split(data, CHUNK)) > 3
    assert summary.retries == 0
    assert stored_sha256(user, job.id) == hashlib.sha256(data).hexdigest()


def test_a_connection_the_server_closed_while_idle_is_opened_again(
    small_chunks: Server, tmp_path: Path
) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(csv_bytes(5_000))
    total = -(-path.stat().st_size // CHUNK)
    user = small_chunks.client()
    token = token_of(user)
    job_id = user.new_job()
    conn = connection(small_chunks)
    try:
        assert post_chunk(conn, token, job_id, path, 0, total)[0] == 200
        # A restart closes every connection; the next request must not be sent into
        # the dead one (it would fail after its first bytes, and count as a retry).
        small_chunks.stop()
        small_chunks.start(same_port=True)
        status, answer = post_chunk(conn, token, job_id, path, 1, total)
    finally:
        conn.close()
    assert status == 200, answer
    assert answer["data_chunk_index"] == 1


def test_an_answer_sent_before_the_whole_body_is_read(small_chunks: Server, tmp_path: Path) -> None:
    """A chunk over the server's limit is refused from its Content-Length; the refusal
    reaches the sender although the server stopped reading (and sendfile failed)."""
    big = 16 * LIMIT
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"a,b\n" + b"1,2\n" * (big // 4))
    user = small_chunks.client()
    job_id = user.new_job()
    conn = connection(small_chunks)
    fields = {"chunk_index": "0", "total_chunks": "1"}
    form = ChunkForm(fields, path.name, big)
    fd = os.open(path, os.O_RDONLY)
    try:
        answer = conn.post(
            f"/api/job/{job_id}/upload-data",
            {"Content-Type": form.content_type, "Authorization": f"Bearer {token_of(user)}"},
            form.head,
            FileRegion(fd, 0, big),
            form.tail,
        )
        assert answer.status_code == 413, answer.text
        assert "limit" in answer.json()["detail"]
        assert user.http.get(f"/api/job/{job_id}/upload-data").json()["chunks"] == []
        # The connection was left mid-body; the next request goes on a new one.
        small = tmp_path / "small.csv"
        small.write_bytes(csv_bytes(100))
        assert post_chunk(conn, token_of(user), job_id, small, 0, 1)[0] == 200
    finally:
        os.close(fd)
        conn.close()


def test_sendfile_only_where_the_bytes_may_go_straight_to_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert Client("http://127.0.0.1:8000").zero_copy_address() == ("127.0.0.1", 8000)
    assert Client("http://chute.example").zero_copy_address() == ("chute.example", 80)
    # TLS encrypts in this process; a custom transport or zero_copy=False means httpx.
    assert Client("https://chute.example").zero_copy_address() is None
    assert Client("http://127.0.0.1:8000", zero_copy=False).zero_copy_address() is None
    # A proxy for http is httpx's business, unless the host is exempt from it.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert Client("http://chute.example").zero_copy_address() is None
    monkeypatch.setenv("NO_PROXY", "chute.example")
    assert Client("http://chute.example").zero_copy_address() == ("chute.example", 80)


def test_an_ipv6_server_is_named_in_brackets(tmp_path: Path) -> None:
    """The Host header of an IPv6 literal needs brackets; a one-request server on ::1
    records what arrives and answers."""
    path = tmp_path / "data.csv"
    path.write_bytes(csv_bytes(100))
    size = path.stat().st_size
    received = bytearray()
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve_one() -> None:
            peer, _ = listener.accept()
            with peer:
                while b"\r\n\r\n" not in received:
                    received.extend(peer.recv(65536))
                head = bytes(received).split(b"\r\n\r\n", 1)[0].decode()
                length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
                while len(received) < len(head) + 4 + length:
                    received.extend(peer.recv(65536))
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        conn = ChunkConnection("::1", port, connect=5, write=10, read=10)
        fd = os.open(path, os.O_RDONLY)
        try:
            form = ChunkForm({"chunk_index": "0", "total_chunks": "1"}, path.name, size)
            answer = conn.post(
                "/x",
                {"Content-Type": form.content_type},
                form.head,
                FileRegion(fd, 0, size),
                form.tail,
            )
        finally:
            os.close(fd)
            conn.close()
        thread.join(10)
    assert answer.status_code == 200
    assert f"host: [::1]:{port}\r\n".encode() in bytes(received).lower()
    assert bytes(received).endswith(form.tail) and path.read_bytes() in received
