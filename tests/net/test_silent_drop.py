"""A silent network drop in the middle of a chunk (issue 14, "Real network test").

`chute upload` and the web uploader (Chromium) send a file each from the client's
namespace, on an 80 Mbit/s link. Once the server has taken part of a chunk from each, the
link goes down for 45 s: no packet reaches either side, so neither sees a RST or a FIN
(checked). Then it comes back, with the client on another address, as a laptop that
slept or changed Wi-Fi comes back. Both uploads must finish byte for byte, each job must
run once, and the server must hold no part lock afterwards.

Why a new address: with the same one, the connections cut by the drop simply resume when
it ends (TCP retransmits into the link until it is back; its give-up time is about 15
minutes), and the test would show nothing about dead requests: `main` passed it that way.
After a sleep or a change of network the old connections are dead for good, and a client
gets its chunks taken only by sending them again on new connections, while the server
still holds the dead requests' parts unless it cut them off.

What lets them finish (DESIGN §2, "Hostile and broken clients"): the server cuts a chunk
request whose body has been silent for CHUTE_BODY_IDLE_TIMEOUT (30 s by default, so
within the 45 s drop) and releases its part; a re-send that finds the part still held
waits for it, then answers 423 with Retry-After; the clients retry 423 and 408 and notice
a send that stopped moving. The server runs with its defaults for all of these.

Both clients go through the same drop, concurrently, to keep the test near one minute.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.client_support import token_of
from tests.conftest import Client
from tests.net.conftest import (
    Connection,
    Link,
    NetServer,
    Process,
    chute_in_client,
    client_env,
    csv_file,
    file_sha256,
    running,
    upload_posts,
)

pytestmark = pytest.mark.net

MiB = 1024 * 1024
RATE = "80mbit"  # 10 MB/s shared by both clients' chunks: each chunk takes a few seconds
# The server's 8 MiB chunks, three in flight (its default): seven or nine of them. The
# browser's file is bigger: it starts first, and still sends once `chute upload` has started.
# Both are sent for seconds before the drop can find them mid-chunk together: on a busy
# machine (the suite runs in parallel) the browser hashes slowly and `chute upload` starts
# slowly, and with 24 MiB `chute upload` once sent its whole file before the two overlapped.
CLI_BYTES = 48 * MiB
WEB_BYTES = 64 * MiB
DROP = 45.0  # seconds the link is down: past the server's 30 s body idle timeout
PASSWORD = "pw-for-tests"
BROWSER_SCRIPT = Path(__file__).with_name("browser_upload.py")
# Seconds the clients get once the link is back, to send the rest of both files.
RECOVERY = 90.0


@dataclass
class Drop:
    """What the test saw of the drop: the facts that make it silent and mid-chunk."""

    # Client-side connections with chunk bytes still unsent or unacknowledged when the
    # link went down, by sender ("cli" or "web").
    in_flight: dict[str, list[Connection]] = field(default_factory=dict)
    # Their server ends 2 s into the drop: still ESTABLISHED if nothing reached the server.
    server_states: dict[str, str] = field(default_factory=dict)
    rx_during: dict[str, int] = field(default_factory=dict)  # packets each end received
    client_tx_dropped: int = 0  # packets the client sent into the dead link
    seconds: float = 0.0


def sender_of(connection: Connection, cli: Process) -> str:
    return "cli" if connection.pid == cli.pid else "web"


def wait_mid_chunk(
    link: Link, processes: dict[str, Process], least: int = MiB, timeout: float = 60
) -> None:
    """Until each of `processes` ("cli" and/or "web") is in the middle of a chunk: has a
    connection to the server that has carried at least `least` bytes and has more to go
    (a chunk request: the other requests are a few hundred bytes)."""
    cli_pid = processes["cli"].pid if "cli" in processes else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for who, process in processes.items():
            if process.popen.poll() is not None:
                raise AssertionError(f"{who} ended before the drop:\n{process.output()}")
        midway = {
            "cli" if c.pid == cli_pid else "web"
            for c in link.connections("cli")
            if c.state == "ESTAB" and c.send_q > 0 and c.bytes_acked >= least
        }
        if midway >= set(processes):
            return
        time.sleep(0.05)
    raise AssertionError(f"{' and '.join(processes)} never mid-chunk in {timeout} s")


def drop_link(link: Link, cli: Process) -> Drop:
    """Take the link down for DROP seconds, noting what shows the drop silent; bring it
    back with the client on a new address."""
    link.down()
    started = time.monotonic()
    drop = Drop()
    try:
        rx_before = {side: link.counters(side).rx_packets for side in ("cli", "srv")}
        dropped_before = link.counters("cli").tx_dropped
        for c in link.connections("cli"):
            if c.state == "ESTAB" and c.send_q > 0:
                drop.in_flight.setdefault(sender_of(c, cli), []).append(c)
        time.sleep(2)
        server_side = {(c.peer, c.local): c.state for c in link.connections("srv")}
        for connections in drop.in_flight.values():
            # A connection whose handshake the drop cut (nothing of it acknowledged but the
            # SYN) may never have been established on the server: only those that carried
            # data tell whether anything reached the server.
            for c in connections:
                if c.bytes_acked > 1:
                    drop.server_states[c.local] = server_side.get((c.local, c.peer), "gone")
        time.sleep(max(0.0, DROP - (time.monotonic() - started)))
        drop.rx_during = {
            side: link.counters(side).rx_packets - rx_before[side] for side in ("cli", "srv")
        }
        drop.client_tx_dropped = link.counters("cli").tx_dropped - dropped_before
    finally:
        link.renumber_client()
        link.up()
        drop.seconds = time.monotonic() - started
    return drop


def web_result(web: Process) -> dict[str, Any]:
    """The browser script's lines, merged: `job`, then `status`, `error`, `states`."""
    result: dict[str, Any] = {}
    for line in web.output().splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def job_named(user: Client, name: str) -> int | None:
    items = user.http.get("/api/job").json()["items"]
    return next((int(job["id"]) for job in items if job["name"] == name), None)


def outcome(server: NetServer, user: Client, job_id: int | None, path: Path) -> dict[str, Any]:
    """What the server did with one client's file: the upload, the job, the stored bytes."""
    if job_id is None:
        return {"job": None}
    upload = user.http.get(f"/api/job/{job_id}/upload-data").json()
    found: dict[str, Any] = {
        "job": job_id,
        "upload": upload.get("state"),
        "chunks": sorted(int(c["index"]) for c in upload.get("chunks", [])),
        "posts": upload_posts(server.log(), job_id),
    }
    if upload.get("state") == "complete":
        job = user.wait_for(job_id, "succeeded", "failed", timeout=60)
        found["status"] = job["status"]
        found["attempts"] = server.sql("SELECT attempts FROM jobs WHERE id = :id", id=job_id)
        size, digest = user.stored(job_id)
        found["byte_exact"] = (size, digest) == (path.stat().st_size, file_sha256(path))
    return found


def test_both_clients_finish_after_a_silent_drop_mid_chunk(
    link: Link, net_server: NetServer, tmp_path: Path
) -> None:
    link.shape(RATE)
    # One user for both clients.
    user = net_server.client(None, PASSWORD)
    cli_file = csv_file(tmp_path / "cli.csv", CLI_BYTES, seed=1)
    web_file = csv_file(tmp_path / "web.csv", WEB_BYTES, seed=2)
    env = client_env(net_server, tmp_path / "home", token_of(user))
    upload = chute_in_client(link, "upload", str(cli_file), "--new", "through a drop")
    browse = link.in_client(
        sys.executable, str(BROWSER_SCRIPT), net_server.link_url, user.username,
        PASSWORD, str(web_file), str(DROP + RECOVERY + 60), str(tmp_path / "stop"),
    )  # fmt: skip
    started = time.monotonic()
    with (
        running(browse, env, tmp_path / "web.log") as web,
        contextlib.ExitStack() as stack,
    ):
        # The browser takes seconds to start, `chute upload` one: it starts once the
        # browser sends its first chunk, so both are mid-chunk soon after.
        wait_mid_chunk(link, {"web": web}, least=256 * 1024)
        cli = stack.enter_context(running(upload, env, tmp_path / "cli.log"))
        wait_mid_chunk(link, {"cli": cli, "web": web})
        drop = drop_link(link, cli)
        back = time.monotonic()
        cli_status = cli.wait(RECOVERY)
        web_status = web.wait(RECOVERY - (time.monotonic() - back))
        took = time.monotonic() - started
        if web_status is None:  # the page still uploads: ask the script what it shows
            (tmp_path / "stop").touch()
            web.wait(10)
        cli_output, web_found = cli.output(), web_result(web)

    cli_job = outcome(net_server, user, job_named(user, "through a drop"), cli_file)
    web_job = outcome(net_server, user, web_found.get("job"), web_file)
    locks = net_server.held_lock_files()
    report = (
        f"in {took:.0f} s; part locks still held: {locks}; drop: {drop}\n"
        f"chute upload: exit {cli_status}, server side {cli_job}\n{cli_output[-2000:]}\n"
        f"browser: exit {web_status}, page {web_found}, server side {web_job}\n"
        f"server log, last lines:\n{net_server.log()[-3000:]}"
    )
    print(report)

    # The drop was silent and cut both clients mid-chunk.
    assert set(drop.in_flight) == {"cli", "web"}, report
    assert set(drop.server_states.values()) == {"ESTAB"}, report
    assert drop.rx_during == {"cli": 0, "srv": 0}, report
    assert drop.client_tx_dropped > 0, report

    # Both finished, byte for byte, each job run once.
    assert cli_status == 0, report
    assert web_status == 0 and web_found.get("error") == "", report
    for job in (cli_job, web_job):
        assert job["upload"] == "complete", report
        assert job["status"] == "succeeded", report
        assert job["attempts"] == [(1,)], report
        assert job["byte_exact"], report
    assert web_found.get("page_errors") == [], report

    # No part lock is held: every chunk request has ended and released its part.
    assert locks == [], report
