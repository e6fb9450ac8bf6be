"""Chunk requests whose bytes go from the page cache to the socket by sendfile(2).

Streamed through httpx, every byte of a chunk is copied three times in this process:
read from the file into a block, joined with the framing into one buffer, and written
into the socket. On a machine where the client shares the cores with other work (the
server itself, on loopback) that is a third of what the client spends per GiB. Here
the kernel moves the chunk's bytes from the file to the socket itself.

The HTTP/1.1 side is h11, the protocol state machine httpx's own transport uses: it
writes the request head and the framing, and parses the answer. Its
`send_with_data_passthrough` hands back a body part unchanged, so a `FileRegion`
passed as data comes back to be sent with `os.sendfile`, and h11 still counts its
length against Content-Length.

Only for plain `http://` servers reached directly: TLS needs the bytes in this process
to encrypt them, and a proxy is httpx's business. `Client.zero_copy_address` says
when this path applies; otherwise chunks go through httpx as before.

Each sender thread keeps one `ChunkConnection`, reused while the server keeps it
open. Network failures raise httpx's own exception types, so the sender retries them
exactly as it retries httpx's.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h11
import httpx

from chute.client.stall import SocketOption

# Bytes handed to sendfile at a time: between two, progress is reported, the rate
# limit is taken, and a stop (Ctrl-C) is noticed; 1024 system calls per GiB.
SENDFILE_BLOCK = 1024 * 1024
READ_BLOCK = 64 * 1024
# How long to wait for an answer the server sent before it stopped reading the body.
EARLY_ANSWER_WAIT = 5.0


@dataclass(frozen=True)
class FileRegion:
    """`size` bytes of the open file `fd` from `offset`: a body part h11 passes through."""

    fd: int
    offset: int
    size: int

    def __len__(self) -> int:
        return self.size


class ChunkConnection:
    """One keep-alive HTTP/1.1 connection, used by one thread at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect: float,
        write: float,
        read: float,
        options: Sequence[SocketOption] = (),
    ) -> None:
        """`write`: the longest a write may move no byte (the stall timeout, `stall.py`);
        `read`: the longest wait for the answer; `options`: set on each new socket."""
        self.host, self.port = host, port
        self.connect_timeout, self.write_timeout, self.read_timeout = connect, write, read
        self.options = tuple(options)
        self._sock: socket.socket | None = None
        self._h11: h11.Connection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._h11 = None

    def post(
        self,
        target: str,
        headers: dict[str, str],
        head: bytes,
        region: FileRegion,
        tail: bytes,
        *,
        block_size: int = SENDFILE_BLOCK,
        before_block: Callable[[int], None] | None = None,
        after_block: Callable[[int], None] | None = None,
    ) -> httpx.Response:
        """POST `head`, the file region and `tail` as one body with Content-Length.

        `before_block(n)` runs before each block of n file bytes (a rate limit, or a
        stop: it may raise, and the connection is then closed); `after_block(n)` once
        they are in the socket. Network and protocol failures raise httpx.TransportError
        subclasses; the connection is then closed, and the next request opens another.
        """
        with self._lock:
            try:
                return self._post(
                    target, headers, head, region, tail, block_size, before_block, after_block
                )
            except BaseException:
                self.close()
                raise

    def _connection(self) -> tuple[socket.socket, h11.Connection]:
        if self._sock is not None and self._h11 is not None and not _readable(self._sock):
            return self._sock, self._h11
        # Never used, or the server closed it while idle (or sent what it should not):
        # a request on it would fail after its first bytes, so open another first.
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port}: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connecting to {self.host}:{self.port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for level, name, value in self.options:
            sock.setsockopt(level, name, value)
        self._sock, self._h11 = sock, h11.Connection(h11.CLIENT)
        return sock, self._h11

    def _post(
        self,
        target: str,
        headers: dict[str, str],
        head: bytes,
        region: FileRegion,
        tail: bytes,
        block_size: int,
        before_block: Callable[[int], None] | None,
        after_block: Callable[[int], None] | None,
    ) -> httpx.Response:
        sock, conn = self._connection()
        length = len(head) + region.size + len(tail)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                (
                    "Host",
                    f"[{self.host}]:{self.port}"
                    if ":" in self.host
                    else f"{self.host}:{self.port}",
                ),
                ("Content-Length", str(length)),
                *headers.items(),
            ],
        )
        try:
            sock.settimeout(self.write_timeout)
            sock.sendall(_bytes(conn.send(request)) + _bytes(conn.send(h11.Data(data=head))))
            # h11 types body parts as bytes; any object with a length passes through.
            parts: list[object] = list(
                conn.send_with_data_passthrough(h11.Data(data=region)) or []  # type: ignore[arg-type]
            )
            for part in parts:
                if part is region:
                    self._sendfile(sock, region, block_size, before_block, after_block)
                else:
                    sock.sendall(part)  # type: ignore[arg-type]
            sock.sendall(
                _bytes(conn.send(h11.Data(data=tail))) + _bytes(conn.send(h11.EndOfMessage()))
            )
        except OSError as exc:
            # The server may have answered before reading the whole body (a chunk over
            # its limit, say) and closed; its answer is then worth more than the error.
            answer = self._early_answer(sock, conn)
            self.close()  # mid-body: this connection can carry no other request
            if answer is not None:
                return answer
            raise _network_error(exc, reading=False) from exc
        sock.settimeout(self.read_timeout)
        return self._answer(sock, conn)

    def _sendfile(
        self,
        sock: socket.socket,
        region: FileRegion,
        block_size: int,
        before_block: Callable[[int], None] | None,
        after_block: Callable[[int], None] | None,
    ) -> None:
        offset, end = region.offset, region.offset + region.size
        out = sock.fileno()
        while offset < end:
            count = min(block_size, end - offset)
            if before_block is not None:
                before_block(count)
            sent = 0
            while sent < count:
                n = _sendfile_some(out, region.fd, offset + sent, count - sent, self.write_timeout)
                if n == 0:
                    raise httpx.WriteError("the file became shorter while it was being sent")
                sent += n
            offset += count
            if after_block is not None:
                after_block(count)

    def _answer(self, sock: socket.socket, conn: h11.Connection) -> httpx.Response:
        try:
            status, headers, body = _read_answer(sock, conn)
        except OSError as exc:
            raise _network_error(exc, reading=True) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"the server's answer: {exc}") from exc
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()
        return httpx.Response(status, headers=headers, content=body)

    def _early_answer(self, sock: socket.socket, conn: h11.Connection) -> httpx.Response | None:
        try:
            sock.settimeout(min(EARLY_ANSWER_WAIT, self.write_timeout))
            status, headers, body = _read_answer(sock, conn)
        except (OSError, h11.ProtocolError):
            return None
        return httpx.Response(status, headers=headers, content=body)


def _bytes(data: bytes | None) -> bytes:
    return data or b""


def _readable(sock: socket.socket) -> bool:
    """True when an idle connection has something to read: the server's close, mostly."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _sendfile_some(out: int, fd: int, offset: int, count: int, timeout: float | None) -> int:
    """One sendfile call on a socket with a timeout (its fd is non-blocking then)."""
    while True:
        try:
            return os.sendfile(out, fd, offset, count)
        except BlockingIOError:
            _, writable, _ = select.select([], [out], [], timeout)
            if not writable:
                raise TimeoutError(f"no byte could be sent for {timeout:g} s") from None


def _read_answer(
    sock: socket.socket, conn: h11.Connection
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The status, headers and whole body of the server's answer."""
    status, headers, body = 0, [], bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(READ_BLOCK))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("the server closed the connection before answering")
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


def _network_error(exc: OSError, *, reading: bool) -> httpx.TransportError:
    """httpx's exception for what failed, so the sender treats it as it treats httpx's."""
    timed_out = isinstance(exc, TimeoutError)
    if reading:
        return (httpx.ReadTimeout if timed_out else httpx.ReadError)(f"reading the answer: {exc}")
    return (httpx.WriteTimeout if timed_out else httpx.WriteError)(f"sending: {exc}")
