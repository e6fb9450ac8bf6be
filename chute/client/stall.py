"""Noticing a chunk request that stopped moving: a silent network drop.

A laptop that sleeps, or Wi-Fi that changes, drops the connection without a FIN or an
RST: the request waits forever unless the client gives up on it. The server cuts off
a body that sent nothing for its idle timeout (30 s by default) and releases the
chunk, so a request with no sign of life for longer than that is sent again, on a new
connection, where it is taken.

Two watches, both set to the stall timeout:
- the socket's own timeouts: a write that moves no byte for that long fails (the
  server not reading, or the link gone while the send buffer was full);
- on Linux, TCP_USER_TIMEOUT with keep-alive probes: bytes sent and not acknowledged
  for that long, or probes unanswered while the answer is awaited, close the
  connection in the kernel. That covers a drop after the whole body sat in the send
  buffer, and one while the server works on the chunk, where no write is pending;
  a live server that merely takes long to answer acknowledges the probes and is
  given the read timeout.
The default is 60 s: longer than the server's idle timeout and its wait for a held
chunk (a re-send waits for the dead request to be cut off; it must not be cut off
itself meanwhile), short enough that an upload goes on about a minute after the link
is back.
"""

from __future__ import annotations

import socket

STALL_TIMEOUT = 60.0

SocketOption = tuple[int, int, int]


def socket_options(stall_timeout: float) -> list[SocketOption]:
    """What to set on a chunk request's socket for the watches above, where they exist."""
    probe = max(1, int(stall_timeout / 4))
    options: list[SocketOption] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", probe),
        ("TCP_KEEPINTVL", probe),
        ("TCP_KEEPCNT", 4),
        ("TCP_USER_TIMEOUT", max(1, int(stall_timeout * 1000))),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options
