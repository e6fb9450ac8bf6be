"""Running the API: uvicorn in this process, or in several processes on one port.

Several API processes each listen on their own socket bound with SO_REUSEPORT, so
the kernel spreads new connections over them. uvicorn's own `--workers` shares one
listening socket, and the process that wakes first takes every connection waiting:
three uploads started together then often all land in one process while the other
idles.

Slow clients (DESIGN §2): uvicorn has no deadline on request headers, and arms its
keep-alive timer only after an answer, so a connection that sends nothing, or a header
byte a second, stays open forever. `HeaderDeadline` adds both rules to uvicorn's own
protocol; request bodies are limited in `chute.api.limits`, whatever the server.

Request bodies reach the application in batches (`BodyBatches`), not in the 64 KiB
pieces a socket read gives, so a 100 MiB upload costs a few hundred wake-ups of the
request's task instead of a few thousand.

The API processes and the embedded worker count for `GET /metrics` in one directory of
this server's own (`metrics_dir`), so a scrape in any of them sees the sums of all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import multiprocessing
import multiprocessing.connection
import os
import resource
import secrets
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chute.config import Settings
from chute.logs import configure

_PR_SET_PDEATHSIG = 1
# Open files an API process asks for: a connection is one.
_MAX_OPEN_FILES = 65536


def stop_with_parent() -> None:
    """In a child process: be sent SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# A request body is handed to the application once this much of it is in, or once its
# first byte not handed over has waited BODY_WAIT seconds, whichever comes first...
BODY_BATCH = 256 * 1024
BODY_WAIT = 0.002
# ...and the socket is no longer read while this much waits for the application.
BODY_HIGH_WATER = 1024 * 1024
# A connection lost with body bytes the app has not taken yet: how long they wait for it,
# and how often it is checked whether it took them.
HAND_OVER_WITHIN = 30.0
HAND_OVER_POLL = 0.005


class BodyBatches(HttpToolsProtocol):
    """uvicorn's httptools protocol, handing request bodies to the application in batches.

    uvicorn wakes the request's task for every piece the socket gives (64 KiB at most
    over loopback) and stops reading past 64 KiB not yet taken, so a fast upload costs
    a task wake-up, an ASGI message and a pass through every layer above per 64 KiB:
    Python work on the path of every byte. Here the task is woken once BODY_BATCH bytes
    are in, or BODY_WAIT seconds after the first byte it has not taken, so a slow
    client's bytes still flow; the end of the body and a lost connection wake it at
    once, as in uvicorn. Memory per connection stays bounded by BODY_HIGH_WATER.
    """

    _wake: asyncio.TimerHandle | None = None

    def on_body(self, body: bytes) -> None:
        # uvicorn's own on_body, with the wake-up rule above and a higher water mark.
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > BODY_HIGH_WATER:
            self.flow.pause_reading()
        if len(cycle.body) >= BODY_BATCH:
            self._cancel_wake()
            cycle.message_event.set()
        elif self._wake is None:
            self._wake = self.loop.call_later(BODY_WAIT, self._wake_up, cycle.message_event)

    def on_message_complete(self) -> None:
        self._cancel_wake()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_wake()
        self._lose_after_hand_over(exc, self.loop.time() + HAND_OVER_WITHIN)

    def _lose_after_hand_over(self, exc: Exception | None, deadline: float) -> None:
        """uvicorn drops body bytes not yet taken when the connection is lost: the app
        sees the disconnect first. A client that sent a part and then closed must have
        that part kept, so the app is handed the bytes first, and learns the connection
        is gone once it has taken them (or HAND_OVER_WITHIN seconds later)."""
        cycle = self.cycle
        waiting = cycle is not None and cycle.body and not cycle.response_complete
        if waiting and self.loop.time() < deadline:
            cycle.message_event.set()
            self.loop.call_later(HAND_OVER_POLL, self._lose_after_hand_over, exc, deadline)
            return
        super().connection_lost(exc)

    def _wake_up(self, event: asyncio.Event) -> None:
        self._wake = None
        event.set()

    def _cancel_wake(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None


class HeaderDeadline(BodyBatches):
    """uvicorn's httptools protocol, with a deadline on request headers and a cap on the
    connections waiting for them, in this process.

    A connection waits for headers from its start and again after each answer (unless a
    pipelined request is already in); past `header_timeout` it is closed. When more than
    `max_waiting` connections wait, the one waiting longest is closed: slow clients hold
    old connections, while a real user's request has its headers in within milliseconds,
    so it keeps getting through however many slow connections are opened.
    """

    header_timeout: ClassVar[float] = 30.0
    max_waiting: ClassVar[int] = 1000
    # This process's connections waiting for headers, longest waiting first.
    waiting: ClassVar[dict[HeaderDeadline, None]] = {}

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request waiting has its headers in already: it starts now.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._deadline = self.loop.call_later(self.header_timeout, self._close)
        self.waiting[self] = None
        while len(self.waiting) > self.max_waiting:
            next(iter(self.waiting))._close()

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.waiting.pop(self, None)

    def _close(self) -> None:
        self._stop_waiting()
        self.transport.close()


def _protocol(settings: Settings) -> type[HeaderDeadline]:
    """`HeaderDeadline` with this process's settings and a waiting list of its own."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)

    class Configured(HeaderDeadline):
        header_timeout = settings.header_timeout
        # Half the file limit at most: waiting connections must leave room for the rest.
        max_waiting = max(1, min(settings.max_waiting_connections, soft // 2))
        waiting: ClassVar[dict[HeaderDeadline, None]] = {}

    return Configured


# prometheus_client's own name for it (`chute.metrics`).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def metrics_dir(data_dir: Path) -> Iterator[Path]:
    """A new, empty directory under `data_dir`/metrics in PROMETHEUS_MULTIPROC_DIR while the
    block runs, for this process and the ones it starts, which inherit it; removed after.

    To be entered before anything imports prometheus_client (`chute.metrics`), which reads
    the variable once, at import. New at every start, so no count of an earlier run is
    added in, and this server's alone: several servers may share a data dir. Each holds a
    lock on `<dir>.lock` while it runs (the kernel lets go when the process dies, SIGKILL
    too), so a start removes the directories of servers that died without removing theirs
    and leaves those of running ones. In the data dir, as the server may write there
    whatever its sandbox (systemd's ProtectSystem=strict leaves /tmp read-only)."""
    root = data_dir.resolve() / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    name = f"serve-{os.getpid()}-{secrets.token_hex(4)}"
    # The lock first, the directory after: a directory without a lock is never a live one.
    lock = os.open(root / f"{name}.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    directory = root / name
    before = os.environ.get(METRICS_DIR_ENV)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory.mkdir(mode=0o700)
        os.environ[METRICS_DIR_ENV] = str(directory)
        yield directory
    finally:
        if before is None:
            os.environ.pop(METRICS_DIR_ENV, None)
        else:
            os.environ[METRICS_DIR_ENV] = before
        shutil.rmtree(directory, ignore_errors=True)
        (root / f"{name}.lock").unlink(missing_ok=True)
        os.close(lock)


def _remove_abandoned(root: Path) -> None:
    """Remove the metrics directories of servers that are no longer running."""
    for path in root.iterdir():
        if path.suffix == ".lock":
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # its server just removed it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its server runs
            finally:
                os.close(fd)
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)
            path.unlink(missing_ok=True)
        elif path.is_dir() and not path.with_name(f"{path.name}.lock").exists():
            shutil.rmtree(path, ignore_errors=True)


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit (up to 65536): each
    connection holds a file, and a low default (1024) is soon taken by slow clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MAX_OPEN_FILES)
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _config(host: str, port: int) -> uvicorn.Config:
    # The same environment as `app_from_env` reads in this process.
    settings = Settings()
    return uvicorn.Config(
        "chute.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        http=_protocol(settings),
        loop="uvloop",
        # uvicorn's loggers go through Chute's handler (`chute.logs.configure`).
        log_config=None,
        timeout_keep_alive=settings.keepalive_timeout,
        # X-Forwarded-* are trusted only behind a proxy configured to set them.
        proxy_headers=False,
        log_level="info",
    )


def serve(host: str, port: int, processes: int) -> None:
    configure(Settings().log_format)
    # Before the API processes start: they inherit it.
    raise_open_files_limit()
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
    configure(Settings().log_format)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    uvicorn.Server(_config(host, port)).run(sockets=[sock])
