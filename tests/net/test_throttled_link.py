"""A slow but moving link (issue 14, "Real network test"): 40 Mbit/s, capped with tbf.

`chute upload` sends a 300 MB file in 100 MiB chunks, three in flight: each chunk gets
about a third of 5 MB/s and takes about a minute. It must finish, its progress must move
at least every second, and no timeout may fire on a chunk that is slow but moving: no
408 in the server's log, no retry in the client's output, every chunk taken on its first
send.

Progress is read from `chute upload`'s own progress bar, run on a terminal (a pty): the
bar is what a person watching the upload sees, and the client feeds it each time a
1 MiB block has been handed to the socket, so it moves at the pace of the link. The
server cannot show progress inside a chunk (GET upload-data lists whole chunks only),
and the web uploader's progress events are the browser's own count of the same thing;
the CLI also prints every retry on that same terminal, which the test needs anyway.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.client_support import token_of
from tests.net.conftest import (
    Link,
    NetServer,
    chute_in_client,
    client_env,
    csv_file,
    upload_posts,
)

pytestmark = pytest.mark.net

MiB = 1024 * 1024
RATE = "40mbit"
FILE_BYTES = 300_000_000
CHUNK = 100 * MiB
PARALLEL = 3
TIMEOUT = 150.0  # seconds for the upload: about 65 at 40 Mbit/s
# Rich redraws the bar ten times a second: a change is seen up to 0.1 s after it happened.
MOST_STILL = 1.0 + 0.1
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_MOVES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
# Rich's DownloadColumn: "12.3/300.0 MB".
_DONE = re.compile(r"([\d,]+\.\d)/([\d,]+\.\d) MB")


@dataclass
class TerminalRun:
    status: int | None  # None: still running at the timeout (then killed)
    reads: list[tuple[float, str]]  # what the terminal showed, with when it came

    @property
    def text(self) -> str:
        """Everything the terminal showed, escape sequences removed."""
        return _MOVES.sub("\n", _COLOUR.sub("", "".join(chunk for _, chunk in self.reads)))

    def progress(self) -> list[tuple[float, float]]:
        """(seconds, MB done) each time the bar showed a new figure."""
        seen: list[tuple[float, float]] = []
        for when, chunk in self.reads_by_frame():
            for match in _DONE.finditer(_COLOUR.sub("", chunk)):
                done = float(match.group(1).replace(",", ""))
                if not seen or done != seen[-1][1]:
                    seen.append((when, done))
        return seen

    def reads_by_frame(self) -> Iterator[tuple[float, str]]:
        """The terminal's output cut at each redraw, each piece with when its end came:
        a figure split between two reads is whole in one piece."""
        pending, when = "", 0.0
        for when, chunk in self.reads:
            pending += chunk
            *frames, pending = re.split(r"(?=\r|\x1b\[\?25l|\x1b\[\d*A)", pending)
            for frame in frames:
                yield when, frame
        yield when, pending


def run_on_terminal(command: list[str], env: dict[str, str], timeout: float) -> TerminalRun:
    """Run `command` with its stderr on a pseudo-terminal (where `chute upload` draws
    its progress bar), recording what it writes there and when."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        command,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "160"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    reads: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not data:
                    break
                reads.append((time.monotonic() - started, data.decode(errors="replace")))
            elif process.poll() is not None:
                break
    finally:
        os.close(master)
        if process.poll() is None:
            os.killpg(process.pid, 9)
        process.wait()
    status = process.returncode if time.monotonic() - started < timeout else None
    return TerminalRun(status, reads)


def longest_still(progress: list[tuple[float, float]], total_mb: float) -> tuple[float, float]:
    """The longest time the bar stood still before it was full, and where (MB)."""
    longest, where = 0.0, 0.0
    moving = [(when, done) for when, done in progress if done > 0]
    for (before, done), (after, _) in itertools.pairwise(moving):
        if done < total_mb and after - before > longest:
            longest, where = after - before, done
    return longest, where


def test_slow_but_moving_chunks_are_never_cut(
    link: Link, net_server: NetServer, tmp_path: Path
) -> None:
    link.shape(RATE)
    # The file is written and its chunks hashed beside the rest, to keep the test short.
    pool = ThreadPoolExecutor(1)
    made = pool.submit(csv_file, tmp_path / "slow.csv", FILE_BYTES, seed=3)
    user = net_server.client()
    path = made.result()
    size = path.stat().st_size
    hashes = pool.submit(_chunk_hashes, path, CHUNK)
    pool.shutdown(wait=False)
    env = client_env(net_server, tmp_path / "home", token_of(user))
    upload = chute_in_client(
        link, "upload", str(path), "--new", "slow link",
        "--chunk-size", f"{CHUNK // MiB}MiB", "--parallel", str(PARALLEL),
    )  # fmt: skip
    log_start = len(net_server.log())  # the server is shared: this test's part of its log
    started = time.monotonic()
    run = run_on_terminal(upload, env, TIMEOUT)
    took = time.monotonic() - started

    output = run.text
    jobs = user.http.get("/api/job").json()["items"]
    job_id = int(jobs[0]["id"]) if jobs else 0
    held = user.http.get(f"/api/job/{job_id}/upload-data").json()
    # The job (a profile of 300 MB) is not this test's business: spare the machine.
    user.http.post(f"/api/job/{job_id}/cancel")
    log = net_server.log()[log_start:]
    posts = upload_posts(log, job_id)
    progress = run.progress()
    total_mb = round(size / 1e6, 1)
    still, at = longest_still(progress, total_mb)
    report = (
        f"exit {run.status} in {took:.1f} s; chunk requests answered {posts}; "
        f"bar stood still at most {still:.2f} s (at {at} MB), {len(progress)} figures, "
        f"last {progress[-1:]}\n"
        f"{_last_lines(output, 15)}\nserver log, last lines:\n{_last_lines(log, 30)}"
    )
    print(report)

    assert run.status == 0, report
    chunks = -(-size // CHUNK)
    assert f"sent {chunks} of {chunks} chunks" in output, report
    # No timeout fired on either side: no retry, each chunk taken on its first send.
    assert "trying again" not in output and "retried" not in output, report
    assert posts == [200] * chunks, report
    assert not re.search(r'HTTP/1\.1" 408\b', log), report
    # The bar moved at least once a second until it was full.
    assert progress and progress[-1][1] == total_mb, report
    assert still <= MOST_STILL, report

    assert held["state"] == "complete", held
    assert [c["size"] for c in held["chunks"]] == [
        min(CHUNK, size - i * CHUNK) for i in range(chunks)
    ]
    assert [c["sha256"] for c in held["chunks"]] == hashes.result(), report


def _chunk_hashes(path: Path, chunk: int) -> list[str]:
    hashes = []
    with path.open("rb") as f:
        while data := f.read(chunk):
            hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


def _last_lines(text: str, count: int) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-count:])
