"""`chute serve --workers N`: N API processes, each listening on its own socket."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from chute.serve import BODY_BATCH, BodyBatches
from tests.conftest import Server, ServerFactory, free_port
from tests.factories import csv_bytes, sha256, split

LISTEN = "0A"


def listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (IPv4), from the kernel's own table."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and state == LISTEN:
            count += 1
    return count


def test_two_api_processes_listen_each_on_its_own_socket(make_server: ServerFactory) -> None:
    server = make_server("--workers", "2")
    # One socket per process, so the kernel spreads connections over both; a socket
    # shared by the processes would show here once. The second process may still be
    # starting when the first answers.
    deadline = time.monotonic() + 20
    while listening_sockets(server.port) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listening_sockets(server.port) == 2
    client = server.client()
    data = csv_bytes(20_000)
    chunks = split(data, 128 * 1024)
    job_id = client.new_job()
    answers = [client.send_chunk(job_id, i, len(chunks), c) for i, c in enumerate(chunks)]
    assert [a.status_code for a in answers] == [200] * len(chunks)
    job = client.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert client.stored(job_id) == (len(data), sha256(data))


def test_one_api_process_by_default(server: Server) -> None:
    assert listening_sockets(server.port) == 1


# --- slow clients (DESIGN §2) -----------------------------------------------------------------


class Slow:
    """A raw connection to the server that sends its request head a byte at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.head = itertools.cycle(b"GET /api/config HTTP/1.1\r\nX-Slow: " + b"x" * 50)

    def trickle(self) -> None:
        """One more byte of the head; notes when the server has closed the connection."""
        if self.closed_at is not None:
            return
        try:
            self.sock.send(bytes([next(self.head)]))
        except OSError:
            self.closed_at = time.monotonic()
            return
        self.poll()

    def poll(self) -> bool:
        """True once the server has closed the connection (EOF or reset)."""
        if self.closed_at is None:
            try:
                readable, _, _ = select.select([self.sock], [], [], 0)
                if readable and not self.sock.recv(4096):
                    self.closed_at = time.monotonic()
            except OSError:
                self.closed_at = time.monotonic()
        return self.closed_at is not None

    def close(self) -> None:
        self.sock.close()


def wait_closed(conn: Slow, within: float) -> float:
    """Seconds from the connection's start until the server closed it, waiting `within`."""
    deadline = time.monotonic() + within
    while not conn.poll():
        assert time.monotonic() < deadline, "the server kept the connection open"
        time.sleep(0.02)
    assert conn.closed_at is not None
    return conn.closed_at - conn.opened


def test_slow_headers_are_cut_off_while_others_get_through(make_server: ServerFactory) -> None:
    server = make_server(CHUTE_HEADER_TIMEOUT="2")
    slow = [Slow(server.port) for _ in range(200)]
    latencies: list[float] = []
    stop = threading.Event()

    def real_user() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                started = time.monotonic()
                assert http.get("/api/config").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    try:
        with ThreadPoolExecutor(1) as pool:
            user = pool.submit(real_user)
            deadline = time.monotonic() + 8
            # One byte per connection every 0.2 s, until the server closes them all.
            while not all(c.closed_at for c in slow) and time.monotonic() < deadline:
                for conn in slow:
                    conn.trickle()
                time.sleep(0.2)
            stop.set()
            user.result()
        lasted = [c.closed_at - c.opened for c in slow if c.closed_at is not None]
        assert len(lasted) == len(slow), f"{len(slow) - len(lasted)} slow connections still open"
        assert min(lasted) > 1.8 and max(lasted) < 5, (min(lasted), max(lasted))
        assert latencies and max(latencies) < 1, max(latencies)
    finally:
        for conn in slow:
            conn.close()


def test_silent_and_idle_connections_are_closed(make_server: ServerFactory) -> None:
    server = make_server(CHUTE_HEADER_TIMEOUT="2", CHUTE_KEEPALIVE_TIMEOUT="1")
    silent, idle, slow_next = (Slow(server.port) for _ in range(3))
    try:
        for conn in (idle, slow_next):
            conn.sock.sendall(b"GET /api/config HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = http.client.HTTPResponse(conn.sock)
            answer.begin()
            assert answer.status == 200
            answer.read()
            conn.opened = time.monotonic()
        # After an answer a byte of the next request stops the keep-alive timer; the
        # header deadline still holds.
        slow_next.trickle()
        assert 1.8 < wait_closed(silent, within=6) < 4
        assert 0.8 < wait_closed(idle, within=6) < 2.5
        assert 1.8 < wait_closed(slow_next, within=6) < 4
    finally:
        for conn in (silent, idle, slow_next):
            conn.close()


def test_past_the_cap_the_connection_waiting_longest_is_closed(
    make_server: ServerFactory,
) -> None:
    server = make_server(CHUTE_MAX_WAITING_CONNECTIONS="5")
    slow = []
    try:
        for _ in range(5):
            slow.append(Slow(server.port))
            slow[-1].trickle()
            time.sleep(0.05)
        time.sleep(0.3)
        assert not any(c.poll() for c in slow)
        slow.append(Slow(server.port))
        wait_closed(slow[0], within=3)
        assert not any(c.poll() for c in slow[1:])
        # A real user's requests get through: the first one's connection, over the cap,
        # closes the oldest waiting.
        for _ in range(3):
            assert httpx.get(f"{server.url}/api/config", timeout=5).status_code == 200
        wait_closed(slow[1], within=3)
        time.sleep(0.3)
        assert not any(c.poll() for c in slow[2:])
    finally:
        for conn in slow:
            conn.close()


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    script = (
        "import resource\n"
        "from chute.serve import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raise_open_files_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(hard, 65536))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    raised, expected = result.stdout.split()
    assert int(raised) == int(expected) > 256


# --- request bodies reach the application in batches (`BodyBatches`) --------------------------


class BodyRecorder:
    """An ASGI app that notes the size and arrival time of every body message it takes,
    then answers 200."""

    def __init__(self, busy_first: float = 0.0) -> None:
        self.busy_first = busy_first
        self.messages: list[tuple[int, float]] = []
        self.disconnected = threading.Event()

    async def __call__(self, scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await asyncio.sleep(self.busy_first)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
            self.messages.append((len(message.get("body", b"")), time.monotonic()))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def batching_server(app: BodyRecorder) -> Iterator[int]:
    """uvicorn with Chute's protocol in a thread, serving `app` on a free port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=BodyBatches, loop="uvloop",
                            log_level="warning", lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def post_head(length: int) -> bytes:
    return f"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


def test_a_fast_body_reaches_the_app_in_batches_not_socket_reads() -> None:
    app = BodyRecorder()
    size = 8 * 1024 * 1024
    with batching_server(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post_head(size))
        piece = b"x" * (64 * 1024)
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sizes = [n for n, _ in app.messages]
    assert sum(sizes) == size
    # Every message but the last holds a whole batch; with uvicorn's own rule, each
    # held what one socket read gave, 64 KiB or so: 128 messages or more here.
    assert all(n >= BODY_BATCH for n in sizes[:-1]), sizes
    assert len(sizes) <= size // BODY_BATCH + 1


def test_a_trickled_body_still_reaches_the_app_as_it_comes() -> None:
    app = BodyRecorder()
    pieces, pause = 6, 0.2
    with batching_server(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post_head(pieces * 100))
        sent: list[float] = []
        for _ in range(pieces):
            sent.append(time.monotonic())
            sock.sendall(b"y" * 100)
            time.sleep(pause)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    # Each small piece is handed over within BODY_WAIT and some scheduling, long before
    # the next one comes: the app never waits for a batch that a slow client never fills.
    arrivals = [at for n, at in app.messages if n]
    assert len(arrivals) == pieces, app.messages
    assert all(at - start < pause / 2 for at, start in zip(arrivals, sent, strict=True))


def test_bytes_sent_before_the_client_went_are_handed_over_before_the_disconnect() -> None:
    # The app is busy while the client sends a part of the body and closes: it must
    # still get those bytes (a part they complete is kept), then the disconnect.
    app = BodyRecorder(busy_first=0.5)
    sent = 300 * 1024
    with batching_server(app) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(post_head(4 * sent) + b"z" * sent)
        assert app.disconnected.wait(10)
    assert sum(n for n, _ in app.messages) == sent
