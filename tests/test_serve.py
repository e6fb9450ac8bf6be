"""`chute serve --workers N`: N API processes, each listening on its own socket."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import ServerFactory
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


def test_one_api_process_by_default(make_server: ServerFactory) -> None:
    server = make_server()
    assert listening_sockets(server.port) == 1
