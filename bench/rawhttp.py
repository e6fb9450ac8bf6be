"""A tiny HTTP/1.1 client on a raw socket, cheap enough to share 2 cores with a server.

A chunk request is written as the multipart preamble (fields first, then the file part's
headers), the chunk's bytes sent straight from the file with sendfile (no copy through
this process), then the closing boundary. Answers must carry a Content-Length.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, BinaryIO

KiB = 1024
HOST = "127.0.0.1"
BOUNDARY = "chute-bench-7f3a9c1e5b"
SOCKET_TIMEOUT = 300.0

MESSAGE_STORED = "Data chunk uploaded successfully"
MESSAGE_COMPLETE = "Data uploaded successfully and job started"


class ProtocolError(Exception):
    """The server answered something this client cannot take, or not what was expected."""


@dataclass(frozen=True)
class Source:
    """The first `size` bytes of a file, cut into chunks, with their SHA-256s."""

    path: Path
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    sha256: str

    @property
    def total_chunks(self) -> int:
        return len(self.chunk_sha256)

    def chunk(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index`."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to HOST:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending = b""

    def close(self) -> None:
        self.sock.close()

    def head(self, method: str, target: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        self.sock.sendall(self.head(method, target, headers or {}, len(body)) + body)
        return self.read_response()

    def read_response(self) -> Response:
        data = self._pending
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(64 * KiB)
            if not piece:
                raise ConnectionError("the server closed the connection without an answer")
            data += piece
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if status in (204, 304):
            length = 0  # no body, whatever the headers say
        elif "content-length" in headers:
            length = int(headers["content-length"])
        else:
            raise ProtocolError(f"an answer without Content-Length: {status_line}")
        while len(data) < length:
            piece = self.sock.recv(max(64 * KiB, length - len(data)))
            if not piece:
                raise ConnectionError("the server closed the connection mid-answer")
            data += piece
        self._pending = data[length:]
        return Response(status, data[:length])


def call(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> Response:
    """One request on a connection of its own (an idle keep-alive connection may have
    been closed by the server while an upload ran)."""
    conn = Connection(port)
    try:
        return conn.request(method, target, headers, body)
    finally:
        conn.close()


@dataclass(frozen=True)
class ChunkResult:
    index: int
    status: int
    answer: dict[str, Any]
    started: float  # perf_counter() before the first byte of the request
    body_sent: float  # after its last byte was handed to the kernel
    answered: float  # after the whole answer was read

    @property
    def after_last_byte(self) -> float:
        return self.answered - self.body_sent


def send_chunk(
    conn: Connection, file: BinaryIO, target: str, token: str, source: Source, index: int
) -> ChunkResult:
    """POST chunk `index` of `source` as multipart/form-data, fields before the file part."""
    offset, length = source.chunk(index)
    fields = {
        "chunk_index": index,
        "total_chunks": source.total_chunks,
        "chunk_size": source.chunk_size,
        "file_size": source.size,
        "chunk_sha256": source.chunk_sha256[index],
    }
    preamble = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    preamble += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    )
    epilogue = f"\r\n--{BOUNDARY}--\r\n".encode()
    head = conn.head(
        "POST",
        target,
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
        len(preamble) + length + len(epilogue),
    )
    started = time.perf_counter()
    try:
        conn.sock.sendall(head + preamble.encode())
        sent = conn.sock.sendfile(file, offset, length)
        if sent != length:
            raise ProtocolError(f"sendfile sent {sent} of {length} bytes of chunk {index}")
        conn.sock.sendall(epilogue)
    except OSError as exc:
        # The server may have answered early (an error) and closed: show what it said.
        try:
            early = conn.read_response()
        except (OSError, ProtocolError):
            raise ProtocolError(f"sending chunk {index} failed: {exc}") from exc
        raise ProtocolError(f"chunk {index}: {early.status} {early.body!r}") from exc
    body_sent = time.perf_counter()
    response = conn.read_response()
    answered = time.perf_counter()
    try:
        answer = response.json()
    except ValueError:
        answer = {"raw": response.body.decode("latin-1")}
    return ChunkResult(index, response.status, answer, started, body_sent, answered)


@dataclass
class UploadRun:
    """One file sent once: its wall time from the first byte to the last answer."""

    file_size: int
    chunk_size: int
    in_flight: int
    seconds: float
    chunks: list[ChunkResult]
    job_id: int | None = None

    @property
    def bytes_per_second(self) -> float:
        return self.file_size / self.seconds

    def completing(self) -> ChunkResult:
        done = [c for c in self.chunks if c.answer.get("complete") is True]
        if len(done) != 1:
            raise ProtocolError(f"expected one completing answer, got {len(done)}")
        return done[0]


def send_file(
    port: int | Sequence[int], target: str, token: str, source: Source, in_flight: int
) -> UploadRun:
    """Send every chunk of `source`, `in_flight` at a time, each thread on its own
    keep-alive connection, chunks taken in index order (so chunk 0 goes first). Given
    several ports (API processes behind no balancer), connection i goes to port i mod n."""
    ports = [port] if isinstance(port, int) else list(port)
    indexes: SimpleQueue[int] = SimpleQueue()
    for index in range(source.total_chunks):
        indexes.put(index)
    results: list[ChunkResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    connections = [Connection(ports[i % len(ports)]) for i in range(in_flight)]
    files = [source.path.open("rb") for _ in range(in_flight)]

    def sender(conn: Connection, file: BinaryIO) -> None:
        try:
            while not errors:
                try:
                    index = indexes.get_nowait()
                except Empty:
                    return
                result = send_chunk(conn, file, target, token, source, index)
                with lock:
                    results.append(result)
                if result.status != 200:
                    raise ProtocolError(f"chunk {index}: {result.status} {result.answer}")
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [
        threading.Thread(target=sender, args=(conn, file), daemon=True)
        for conn, file in zip(connections, files, strict=True)
    ]
    try:
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    finally:
        for conn in connections:
            conn.close()
        for file in files:
            file.close()
    if errors:
        raise errors[0]
    results.sort(key=lambda r: r.index)
    return UploadRun(source.size, source.chunk_size, in_flight, seconds, results)
