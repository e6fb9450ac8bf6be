"""Running the API: uvicorn in this process, or in several processes on one port.

Several API processes each listen on their own socket bound with SO_REUSEPORT, so
the kernel spreads new connections over them. uvicorn's own `--workers` shares one
listening socket, and the process that wakes first takes every connection waiting:
three uploads started together then often all land in one process while the other
idles.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import socket
from types import FrameType

import uvicorn

_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """In a child process: be sent SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        "chute.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        # X-Forwarded-* are trusted only behind a proxy configured to set them.
        proxy_headers=False,
        log_level="info",
    )


def serve(host: str, port: int, processes: int) -> None:
    if processes <= 1:
        uvicorn.Server(_config(host, port)).run()
        return
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve_one, args=(host, port), name=f"chute-api-{n}")
        for n in range(processes)
    ]
    for child in children:
        child.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.is_alive():
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # One API process gone is a broken server: stop the others too, and let the
    # caller's supervisor (systemd, a container runtime) start it all again.
    multiprocessing.connection.wait([child.sentinel for child in children])
    stop(signal.SIGTERM, None)
    for child in children:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


def _serve_one(host: str, port: int) -> None:
    stop_with_parent()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    uvicorn.Server(_config(host, port)).run(sockets=[sock])
