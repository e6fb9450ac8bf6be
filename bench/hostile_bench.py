"""What hostile clients cost a real user: slow headers (slowloris) and a huge body.

    .venv/bin/python bench/hostile_bench.py [--slow 1000] [--seconds 40] [--nofile 1024]

Starts `chute serve` (the code on this Python's path) with its open-files limit set to
`--nofile`, then, in one run:

1. **Slowloris**: `--slow` connections each send one byte of a request's headers a second,
   while a real user asks `GET /api/config` five times a second on new connections for
   `--seconds`. It prints how many of the user's requests failed, their answer times, and
   how many slow connections the server still held as time went by.
2. **A huge body**: 124 MB of JSON to `POST /api/auth/login`, once with a Content-Length
   and once chunked, while the same user keeps asking. It prints the answers, the API
   process's peak RSS growth and the user's slowest answer.

Point it at another checkout with `PYTHONPATH=/path/to/checkout` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from servers import HOST, Server, free_port, running

BODY_BYTES = 124 * 1000 * 1000
# The huge body: the start of a JSON object whose user name never ends, 1 MiB at a time.
BLOCK = b'{"username": "' + b"a" * (1 << 20)


async def _user(url: str, stop: asyncio.Event, times: list[float], failures: list[str]) -> None:
    """A real user: a fresh connection and a small request every 0.2 s."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(f"{url}/api/config")
            if answer.status_code != 200:
                failures.append(f"HTTP {answer.status_code}")
            else:
                times.append(time.monotonic() - started)
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
        await asyncio.sleep(0.2)


async def _slow_client(port: int, open_now: list[int]) -> None:
    """Send a request's headers one byte a second, until the server closes the connection."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return
    open_now[0] += 1
    try:
        for byte in b"GET /api/config HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(1), timeout=1.0)
                return  # an answer or the end of the connection: the server let go
            except TimeoutError:
                continue
    except OSError:
        return
    finally:
        open_now[0] -= 1
        writer.close()


def _summary(times: list[float], failures: list[str]) -> str:
    if not times:
        return f"0 answered, {len(failures)} failed ({', '.join(sorted(set(failures)))})"
    q = statistics.quantiles(times, n=100) if len(times) > 1 else [times[0]] * 99
    failed = f"{len(failures)} failed" + (
        f" ({', '.join(sorted(set(failures)))})" if failures else ""
    )
    return (
        f"{len(times)} answered, {failed}; answer time median {statistics.median(times):.3f} s, "
        f"p99 {q[98]:.3f} s, max {max(times):.3f} s"
    )


async def slowloris(url: str, port: int, slow: int, seconds: float) -> None:
    stop = asyncio.Event()
    times: list[float] = []
    failures: list[str] = []
    open_now = [0]
    user = asyncio.create_task(_user(url, stop, times, failures))
    clients = [asyncio.create_task(_slow_client(port, open_now)) for _ in range(slow)]
    started = time.monotonic()
    marks = []
    while time.monotonic() - started < seconds:
        await asyncio.sleep(5)
        marks.append(f"{time.monotonic() - started:.0f} s: {open_now[0]}")
    stop.set()
    await user
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    print(f"slowloris, {slow} connections: slow ones still open at " + ", ".join(marks))
    print(f"  the real user: {_summary(times, failures)}")


async def huge_body(url: str, server: Server) -> None:
    assert server.process is not None
    api = server.process.pid  # prlimit execs the server: the API process keeps its pid
    for how in ("Content-Length", "chunked"):
        server.reset_peaks()
        before = next(m for m in server.memory() if m.pid == api).peak
        stop = asyncio.Event()
        times: list[float] = []
        failures: list[str] = []
        user = asyncio.create_task(_user(url, stop, times, failures))

        async def body() -> object:
            sent = 0
            while sent < BODY_BYTES:
                yield BLOCK
                sent += len(BLOCK)

        content: object = (
            b"".join([BLOCK] * (BODY_BYTES // len(BLOCK))) if how == "Content-Length" else body()
        )
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                answer = await http.post(
                    f"{url}/api/auth/login",
                    content=content,  # type: ignore[arg-type]
                    headers={"Content-Type": "application/json"},
                )
            result = f"HTTP {answer.status_code} {answer.text[:80]}"
        except httpx.HTTPError as exc:
            result = f"{type(exc).__name__} (the server closed the connection)"
        await asyncio.sleep(1)
        stop.set()
        await user
        after = next(m for m in server.memory() if m.pid == api).peak
        print(f"{BODY_BYTES // 1_000_000} MB JSON to /api/auth/login ({how}): {result}")
        grew = (after - before) / 1e6
        print(f"  API process peak RSS +{grew:.1f} MB; the real user: {_summary(times, failures)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=1000, help="slow-header connections")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the slowloris lasts")
    parser.add_argument("--nofile", type=int, default=1024, help="the server's open-files limit")
    args = parser.parse_args()
    # The bench's own connections need file descriptors too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.slow * 2 + 256)), hard))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chute-hostile-") as tmp:
        env = {**os.environ, "CHUTE_DATA_DIR": f"{tmp}/data", "CHUTE_PORT": str(port)}
        argv = [
            "prlimit",
            f"--nofile={args.nofile}:{args.nofile}",
            sys.executable,
            "-m",
            "chute",
            "serve",
        ]
        server = Server(argv, env, port, 1, Path(tmp) / "serve.log")
        with running(server, Path(tmp)):
            url = f"http://{HOST}:{port}"
            asyncio.run(slowloris(url, port, args.slow, args.seconds))
            asyncio.run(huge_body(url, server))


if __name__ == "__main__":
    main()
