"""Uploads under stress: requests cut off, a server killed mid-chunk, two requests racing
for one chunk, abandoned uploads expiring, and a large chunk streamed without buffering.

Chunks here are a few MiB, to catch a request in the middle of one; on S3, at least the
deployment's `chunk` (5 MiB, a part). Local disk shows where the bytes of a chunk in flight
are (the upload's file, a part file, a spool file); an S3 store shows a part only once it
is whole, so there the tests wait until the server has read what was sent.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.api.test_upload import (
    COMPLETE,
    STORED,
    assert_succeeded_with,
    chunk_parts,
    form_body,
    new_uploads,
    open_raw,
    read_answer,
    recorded,
    upload_status,
)
from tests.conftest import Client, Deployment, Server, ServerFactory, serving, storage_holds
from tests.factories import chunk_fields, csv_bytes, csv_of_size, sha256, split

MiB = 1024 * 1024


# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    """One user for the module's tests (each makes its own jobs)."""
    return server.client()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def reconnect(server: Server, client: Client) -> httpx.Client:
    """A client of the same user for a restarted server (it listens on a new port)."""
    auth = client.http.headers["Authorization"]
    return httpx.Client(base_url=server.url, headers={"Authorization": auth}, timeout=120)


def new_upload(server: Server, before: set[str]) -> str:
    """The storage id of the one upload begun since `before` was listed."""
    created: list[str] = []

    def appeared() -> bool:
        created[:] = new_uploads(server, before)
        return len(created) == 1

    wait_until(appeared, "the upload appears in the storage")
    return created[0]


def upload_dir(server: Server, upload: str) -> Path:
    """Local disk: an unfinished upload's directory."""
    return server.data_dir / "files" / "uploads" / upload


def file_of(data: bytes, size: int) -> bytes:
    """The first `size` bytes of `data` (its last row cut short): a file of exact size."""
    assert len(data) >= size
    return data[:size]


def holds(path: Path, offset: int, data: bytes) -> bool:
    """The file has `data` at `offset` (the bytes reached it, at least in the page cache)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(len(data)) == data
    except FileNotFoundError:
        return False


def start_raw(
    server: Server, client: Client, job_id: int, content_type: str, body: bytes, sent: int
) -> socket.socket:
    """Start a chunk request on a raw socket and send the first `sent` bytes of its body."""
    sock = open_raw(
        server,
        f"/api/job/{job_id}/upload-data",
        {
            "Authorization": client.http.headers["Authorization"],
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
        },
    )
    sock.sendall(body[:sent])
    return sock


# --- requests cut off ---------------------------------------------------------------------


def wait_read(server: Server, sock: socket.socket) -> None:
    """Wait until the server process has read from the kernel every byte sent on `sock`.

    The server then has all but its last small buffer of them in hand: a request closed
    only after this is cut off mid-stream, not before the server saw its body.
    """
    ours = f"0100007F:{sock.getsockname()[1]:04X}"
    theirs = f"0100007F:{server.port:04X}"

    def drained() -> bool:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == theirs and fields[2] == ours:
                return int(fields[4].split(":")[1], 16) == 0  # rx_queue
        return False

    wait_until(drained, "the server reads what was sent")


@pytest.mark.parametrize("file_first", [False, True], ids=["fields-first", "file-first"])
@pytest.mark.parametrize("where", ["mid-file", "before-the-end"])
def test_cut_off_request_records_nothing(
    server: Server, client: Client, deployment: Deployment, file_first: bool, where: str
) -> None:
    chunk_size = max(4 * MiB, deployment.chunk)
    data = file_of(csv_of_size(2 * chunk_size + 3 * MiB), 2 * chunk_size + 3 * MiB)
    chunks = split(data, chunk_size)
    total = len(chunks)
    assert total == 3
    job_id = client.new_job()
    before = set(storage_holds(server).uploads)
    for index in (0, 1):
        assert client.send_chunk(job_id, index, total, chunks[index]).status_code == 200
    held = recorded(client, job_id)
    (upload,) = new_uploads(server, before)

    # The last chunk, without a checksum (the seed's sample sends none): it may be shorter
    # than the others, so only the request's end tells a cut-off one from a whole one.
    last = chunks[2]
    parts = chunk_parts(2, total, last, file_first=file_first, checksum=False)
    content_type, body = form_body(parts)
    boundary = content_type.split("boundary=")[1].encode()
    # Mid-file: half the chunk's bytes. Before the end: every byte of the chunk and of the
    # fields, only the form's closing boundary missing.
    cut = (
        body.index(last) + len(last) // 2
        if where == "mid-file"
        else body.rindex(b"--" + boundary + b"--")
    )
    with start_raw(server, client, job_id, content_type, body, cut) as sock:
        wait_read(server, sock)

    assert recorded(client, job_id) == held
    if deployment.s3:
        # The cut-off part holds nothing in the store: it never got all its bytes.
        wait_until(
            lambda: storage_holds(server).uploads[upload] == 2 * chunk_size,
            "the store holds only the recorded parts",
        )
    # The whole chunk then goes through as a first send (had the cut request recorded its
    # bytes, this would be a duplicate or a conflict, or the file would come out short).
    answer = client.send_chunk(job_id, 2, total, last)
    assert answer.status_code == 200, answer.text
    assert answer.json()["duplicate"] is False
    assert answer.json()["message"] == COMPLETE
    assert recorded(client, job_id) == {**held, 2: sha256(last)}
    assert_succeeded_with(client, job_id, data)
    assert not (server.data_dir / "tmp").exists() or not list((server.data_dir / "tmp").iterdir())


# --- the server killed mid-chunk ---------------------------------------------------------


@pytest.fixture(scope="module")
def lease_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[Server]:
    """The server the kill tests kill and start again, one after the other. On S3 the
    killed request's lease on its part (in the database) must lapse before the chunk can
    be sent again: a short lease keeps the tests short."""
    base = tmp_path_factory.mktemp("chute-lease")
    with serving(base, deployment, CHUTE_PART_LEASE_SECONDS="3") as server:
        yield server


@pytest.mark.parametrize("placed", [True, False], ids=["in-place", "kept-aside"])
def test_server_killed_mid_chunk_records_nothing(
    lease_server: Server, deployment: Deployment, placed: bool
) -> None:
    server = lease_server
    if server.process is None or server.process.poll() is not None:
        server.start()  # an earlier test failed before it started the server again
    client = server.client()
    chunk_size = max(3 * MiB, deployment.chunk)
    data = file_of(csv_of_size(2 * chunk_size + 2 * MiB), 2 * chunk_size + 2 * MiB)
    chunks = split(data, chunk_size)
    total = len(chunks)
    assert total == 3 and len(chunks[-1]) == 2 * MiB
    job_id = client.new_job()
    before = set(storage_holds(server).uploads)
    if placed:
        # Chunk 0 fixes the chunk size: chunk 1 streams into the upload's file at its offset.
        assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200
        index = 1
    else:
        # The last chunk first: with no chunk size known yet it is kept aside until it is.
        index = 2
    head = chunks[index][:MiB]

    # Send all but the last MiB of the chunk; wait until its first MiB is on its way to disk.
    content_type, body = form_body(chunk_parts(index, total, chunks[index]))
    cut = body.index(chunks[index]) + len(chunks[index]) - MiB
    with start_raw(server, client, job_id, content_type, body, cut) as sock:
        upload = new_upload(server, before)
        if deployment.s3:
            wait_read(server, sock)
        elif placed:
            wait_until(
                lambda: holds(upload_dir(server, upload) / "data", index * chunk_size, head),
                "the chunk's first MiB reaches the upload's file",
            )
        else:
            wait_until(
                lambda: any(
                    holds(p, 0, head) for p in upload_dir(server, upload).glob(f"part-{index}*")
                ),
                "the chunk's first MiB reaches a part file",
            )
        server.stop(kill=True)
    if deployment.s3:
        # The killed request's part holds nothing in the store: it never got its last byte.
        held = storage_holds(server).uploads[upload]
        assert held == (chunk_size if placed else 0)
    else:
        # A part kept aside takes its name only once durable and complete.
        assert not (upload_dir(server, upload) / f"part-{index}").exists()

    server.start()
    with reconnect(server, client) as http:
        again = replace(client, http=http)
        expected = {0: sha256(chunks[0])} if placed else {}
        assert recorded(again, job_id) == expected
        assert again.job(job_id)["status"] in ("uploading", "awaiting_upload")
        order = [index, *(i for i in range(total) if i != index and i not in expected)]
        answers = [again.send_chunk(job_id, i, total, chunks[i]) for i in order]
        assert [a.status_code for a in answers] == [200] * len(order), [a.text for a in answers]
        assert answers[0].json()["duplicate"] is False
        assert answers[-1].json()["message"] == COMPLETE
        assert_succeeded_with(again, job_id, data)


# --- racing requests ----------------------------------------------------------------------


def paced(body: bytes, start: threading.Barrier, piece: int = 128 * 1024) -> Iterator[bytes]:
    """The body in pieces, slowly enough that two such bodies overlap on the server."""
    start.wait(timeout=30)
    for offset in range(0, len(body), piece):
        yield body[offset : offset + piece]
        time.sleep(0.002)


@pytest.mark.parametrize("same_bytes", [False, True], ids=["other-bytes", "same-bytes"])
def test_racing_requests_for_one_chunk_never_mix(
    client: Client, deployment: Deployment, same_bytes: bool
) -> None:
    chunk_size = max(4 * MiB, deployment.chunk)
    rivals = [file_of(csv_of_size(3 * chunk_size, seed=seed), 3 * chunk_size) for seed in (1, 2)]
    assert rivals[0][chunk_size : 2 * chunk_size] != rivals[1][chunk_size : 2 * chunk_size]
    if same_bytes:
        rivals[1] = rivals[0]
    job_id = client.new_job()
    answer = client.send_chunk(job_id, 0, 3, rivals[0][:chunk_size], chunk_size=chunk_size)
    assert answer.status_code == 200, answer.text
    start = threading.Barrier(2)

    def send(rival: bytes) -> httpx.Response:
        chunk = rival[chunk_size : 2 * chunk_size]
        content_type, body = form_body(
            [*[(k, v) for k, v in chunk_fields(1, 3, chunk, chunk_size=chunk_size).items()],
             ("file", chunk)]
        )  # fmt: skip
        return client.http.post(
            f"/api/job/{job_id}/upload-data",
            content=paced(body, start),
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        )

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, rivals))
    codes = sorted(a.status_code for a in answers)
    if same_bytes:
        assert codes == [200, 200], [a.text for a in answers]
        assert sorted(a.json()["duplicate"] for a in answers) == [False, True]
        winner = rivals[0]
    else:
        assert codes == [200, 409], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 409)
        assert loser.json()["detail"] == "Chunk 1 is already stored with different bytes."
        winner = rivals[[a.status_code for a in answers].index(200)]
    chunk = winner[chunk_size : 2 * chunk_size]
    assert recorded(client, job_id) == {0: sha256(rivals[0][:chunk_size]), 1: sha256(chunk)}

    last = rivals[0][2 * chunk_size :]
    answer = client.send_chunk(job_id, 2, 3, last, chunk_size=chunk_size)
    assert answer.json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, rivals[0][:chunk_size] + chunk + last)


def test_discard_while_a_chunk_streams_records_nothing(
    server: Server, client: Client, deployment: Deployment
) -> None:
    chunk_size = max(2 * MiB, deployment.chunk)
    data = file_of(csv_of_size(3 * chunk_size), 3 * chunk_size)
    chunks = split(data, chunk_size)
    job_id = client.new_job()
    before = set(storage_holds(server).uploads)
    assert client.send_chunk(job_id, 0, 3, chunks[0]).status_code == 200
    upload = new_upload(server, before)
    content_type, body = form_body(chunk_parts(1, 3, chunks[1]))
    cut = body.index(chunks[1]) + chunk_size - MiB // 2
    with start_raw(server, client, job_id, content_type, body, cut) as sock:
        if deployment.s3:
            wait_read(server, sock)
        else:
            wait_until(
                lambda: holds(upload_dir(server, upload) / "data", chunk_size, chunks[1][:MiB]),
                "the chunk's first MiB reaches the upload's file",
            )
        assert client.http.delete(f"/api/job/{job_id}/upload-data").status_code == 204
        assert upload not in storage_holds(server).uploads
        sock.sendall(body[cut:])
        status, answer = read_answer(sock)
    assert status == 409
    assert answer["detail"] == "The upload was discarded while this chunk was being sent."
    assert upload_status(client, job_id)["chunks"] == []
    # Nor did the chunk's late bytes bring the upload back.
    assert set(storage_holds(server).uploads) == before
    assert client.job(job_id)["status"] == "awaiting_upload"


# --- expiry --------------------------------------------------------------------------------


def test_unfinished_upload_expires_and_its_bytes_go(
    make_server: ServerFactory, deployment: Deployment, chunk: int
) -> None:
    # An upload untouched for longer than the expiry is removed even while its first chunk
    # streams, and must still be there when the test lists the storage after that chunk:
    # on S3 a 5 MiB chunk may take seconds to stream on a busy machine (tests run in
    # parallel), so there the expiry is longer.
    expiry = "5" if deployment.s3 else "2"
    server = make_server(CHUTE_UPLOAD_EXPIRY=expiry, CHUTE_SWEEP_INTERVAL="0.3")
    client = server.client()
    chunks = split(csv_of_size(3 * chunk + chunk // 2), chunk)
    total = len(chunks)

    finished = client.new_job()
    data = csv_bytes(10_000)
    assert client.send_chunk(finished, 0, 1, data).json()["message"] == COMPLETE
    assert_succeeded_with(client, finished, data)
    waiting = client.new_job()
    abandoned = client.new_job()
    assert client.send_chunk(abandoned, 2, total, chunks[2]).json()["message"] == STORED
    assert storage_holds(server).uploads

    job = client.wait_for(abandoned, "upload_expired", timeout=30)
    assert job["upload"] is None
    assert storage_holds(server).uploads == {}
    status = upload_status(client, abandoned)
    assert (status["state"], status["chunks"]) == ("empty", [])
    answer = client.send_chunk(abandoned, 1, total, chunks[1])
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == "This job is not accepting data (status: upload_expired)."

    # Older than the abandoned upload, yet untouched: complete uploads never expire, and a
    # job with no upload has nothing to expire.
    assert client.job(finished)["status"] == "succeeded"
    assert client.stored(finished) == (len(data), sha256(data))
    assert client.job(waiting)["status"] == "awaiting_upload"


# --- streaming, not buffering --------------------------------------------------------------


def serving_pids(server: Server) -> list[int]:
    """Processes holding the server's listening socket: those that take the requests."""
    port = f"{server.port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port}") and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    assert pids, "no process listens on the server's port"
    return pids


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def write_csv(path: Path, size: int) -> str:
    """A CSV file of about `size` bytes, written block by block; returns its sha256."""
    digest = hashlib.sha256()
    block = csv_bytes(40_000).split(b"\n", 1)[1]  # rows only
    with path.open("wb") as f:
        header = b"id,name,amount\n"
        f.write(header)
        digest.update(header)
        written = len(header)
        while written + len(block) <= size:
            f.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def test_large_chunk_streams_without_buffering(
    make_server: ServerFactory, deployment: Deployment, tmp_path: Path
) -> None:
    limit = 300 * MiB
    server = make_server(CHUTE_MAX_CHUNK_BYTES=str(limit), CHUTE_CHUNK_SIZE=str(limit))
    client = server.client()
    source = tmp_path / "big.csv"
    digest = write_csv(source, 256 * MiB)
    size = source.stat().st_size
    assert size > 250 * MiB
    job_id = client.new_job()

    boundary = "chute-large-chunk"
    head, tail = form_body(
        [*chunk_fields(0, 1, chunk_size=limit).items(), ("chunk_sha256", digest), ("file", b"\0")],
        boundary,
    )[1].split(b"\0")

    def body() -> Iterator[bytes]:
        yield head
        with source.open("rb") as f:
            while block := f.read(MiB):
                yield block
        yield tail

    pids = serving_pids(server)
    for pid in pids:
        # Sign-in hashes passwords with argon2, memory-hard by design (64 MiB a hash):
        # start the peak from here, to measure the upload alone.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    baseline = max(peak_rss(pid) for pid in pids)
    spool_dir = server.data_dir / "tmp"
    spooled: set[str] = set()

    with ThreadPoolExecutor(1) as pool:
        sending: Future[httpx.Response] = pool.submit(
            client.http.post,
            f"/api/job/{job_id}/upload-data",
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        while not sending.done():
            if spool_dir.exists():
                spooled.update(p.name for p in spool_dir.iterdir())
            time.sleep(0.05)
        answer = sending.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == COMPLETE
    peak = max(peak_rss(pid) for pid in pids)
    # The process's own size: boto3 and the PostgreSQL and Redis clients add some 40 MiB
    # (README: about 120 MB per API process on local disk, 170 MB on S3).
    most = (200 if deployment.s3 else 150) * MiB
    assert peak < most, f"peak RSS {peak / MiB:.0f} MiB (from {baseline / MiB:.0f} MiB)"
    assert peak - baseline < 64 * MiB, f"grew {(peak - baseline) / MiB:.0f} MiB for the chunk"
    # The fields came first: the bytes went straight to their place, never to a spool file.
    assert spooled == set()
    job = client.wait_for(job_id, "succeeded", "failed", timeout=120)
    assert job["status"] == "succeeded", job
    assert client.stored(job_id) == (size, digest)


@pytest.mark.parametrize("file_first", [False, True], ids=["fields-first", "file-first"])
def test_spool_file_only_when_the_file_part_comes_first(
    server: Server, client: Client, deployment: Deployment, file_first: bool
) -> None:
    chunk_size = max(3 * MiB, deployment.chunk)
    data = file_of(csv_of_size(2 * chunk_size), 2 * chunk_size)
    chunks = split(data, chunk_size)
    assert [len(c) for c in chunks] == [chunk_size, chunk_size]
    job_id = client.new_job()
    before = set(storage_holds(server).uploads)
    assert client.send_chunk(job_id, 0, 2, chunks[0], chunk_size=chunk_size).status_code == 200
    upload = new_upload(server, before)
    spool_dir = server.data_dir / "tmp"

    content_type, body = form_body(chunk_parts(1, 2, chunks[1], file_first=file_first))
    middle = body.index(chunks[1]) + 2 * MiB
    with start_raw(server, client, job_id, content_type, body, middle) as sock:
        if file_first:
            wait_until(
                lambda: any(holds(p, 0, chunks[1][:MiB]) for p in spool_dir.glob("spool-*")),
                "the chunk's first MiB reaches a spool file",
            )
        else:
            if deployment.s3:
                wait_read(server, sock)
            else:
                wait_until(
                    lambda: holds(upload_dir(server, upload) / "data", chunk_size, chunks[1][:MiB]),
                    "the chunk's first MiB reaches its place in the upload's file",
                )
            assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
        sock.sendall(body[middle:])
        status, answer = read_answer(sock)
    assert (status, answer["message"]) == (200, COMPLETE)
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
    assert_succeeded_with(client, job_id, data)
