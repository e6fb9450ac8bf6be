"""The tus front door (DESIGN §6) proven with clients we did not write: tus-js-client in Node
(driven through `upload.mjs` beside this file) and tuspy, each against a real `chute serve`.

A module's tests share a server started with `--no-worker`: the request that completes an
upload leaves its job `queued` with exactly one task in the queue (a second enqueue would
show as a second task); then the test starts a worker, and the job runs once. The server's
chunk size is `part`, the most a tus PATCH holds unrecorded while it streams, so files are
sized in parts: 256 KiB on local disk, S3's least part size (5 MiB) on S3.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huey.api import Huey

from tests.conftest import ROOT, S3_PART, Client, Deployment, Server, deployment_env
from tests.factories import csv_of_size, sha256

TUS = "/api/tus/"
TUS_RESUMABLE = {"Tus-Resumable": "1.0.0"}
UPLOAD_MJS = Path(__file__).with_name("upload.mjs")
EMBEDDED_PART = 256 * 1024
# tus-js-client's retryDelays (ms) across a server restart: generous, since a restarted
# server may take a few seconds to answer and a part left locked by the killed one may
# answer 423 for a while.
RETRY_DELAYS = [250, 500, *[1000] * 10, *[2000] * 20]


@pytest.fixture(scope="module")
def part(deployment: Deployment) -> int:
    """The server's chunk size: a part of a tus upload, recorded as soon as it is stored."""
    return S3_PART if deployment.s3 else EMBEDDED_PART


@pytest.fixture(scope="module")
def quiet_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment, part: int
) -> Iterator[Server]:
    """A server shared by a module's tests, without a worker (tests start one when they
    want their job run): as `tests.conftest.serving`, plus `--no-worker`."""
    base = tmp_path_factory.mktemp("chute-tus")
    with deployment_env(deployment) as extra:
        env = {
            **os.environ,
            "CHUTE_DATA_DIR": str(base / "data"),
            "CHUTE_MIN_FREE_BYTES": "0",
            "CHUTE_CHUNK_SIZE": str(part),
            **extra,
        }
        server = Server(base / "data", env, ["--no-worker"], chunk=deployment.chunk)
        try:
            server.start()
            yield server
        finally:
            server.close_clients()
            server.stop(kill=True)


@pytest.fixture
def tus_server(quiet_server: Server) -> Server:
    """The module's server, its queue empty: what a test finds queued is its own doing."""
    huey = quiet_server.queue()
    try:
        huey.flush()
    finally:
        close_queue(quiet_server, huey)
    return quiet_server


def csv_file(folder: Path, size: int, name: str = "sales.csv", seed: int = 0) -> tuple[Path, bytes]:
    """A CSV file of at least `size` bytes in whole rows: its path and bytes."""
    data = csv_of_size(size, seed)
    path = folder / name
    path.write_bytes(data)
    return path, data


def head(client: Client, url: str) -> httpx.Response:
    return client.http.head(url, headers=TUS_RESUMABLE)


def offset_of(client: Client, url: str) -> int:
    """The upload's `Upload-Offset` as the server answers `HEAD` now."""
    answer = head(client, url)
    assert answer.status_code == 200, (answer.status_code, answer.headers)
    return int(answer.headers["Upload-Offset"])


def upload_status(client: Client, job_id: int) -> dict[str, Any]:
    """What the server holds of a job's upload (`GET .../upload-data`), whichever protocol."""
    answer = client.http.get(f"/api/job/{job_id}/upload-data")
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()
    return status


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def close_queue(server: Server, huey: Huey) -> None:
    if server.scale_out:
        huey.storage.pool.disconnect()
    else:
        huey.storage.close()


def pending_tasks(server: Server) -> int:
    """Tasks waiting in the server's queue (no worker runs until the test starts one)."""
    huey = server.queue()
    try:
        return int(huey.pending_count())
    finally:
        close_queue(server, huey)


def assert_ran_once(server: Server, client: Client, job_id: int, data: bytes) -> dict[str, Any]:
    """The completed upload queued its job exactly once; a worker started now runs it once,
    on exactly the file's bytes."""
    job = client.job(job_id)
    assert job["status"] == "queued", job
    assert pending_tasks(server) == 1
    worker = server.start_worker()
    try:
        job = client.wait_for(job_id, "succeeded", "failed", timeout=90)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert client.stored(job_id) == (len(data), sha256(data))
    assert job["result"]["input"]["size"] == len(data)
    assert job["result"]["rows"] == data.count(b"\n") - 1
    assert pending_tasks(server) == 0
    return job


class TusJs:
    """One run of upload.mjs: tus-js-client sending one file. Its requests and answers are
    read as they happen (`until`), so a test can act mid-upload."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            ["node", str(UPLOAD_MJS), json.dumps(options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as lines:
            for line in lines:
                self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr as lines:
            self.stderr.extend(lines)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next line, or None once the client's output has ended."""
        if self._ended:
            return None
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"tus-js-client said nothing in time: {self.said()}") from None
        if line is None:
            self._ended = True
            return None
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def until(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """Read on until a line of this kind ("held", "success", ...) and return it."""
        deadline = time.monotonic() + timeout
        while (event := self._next(deadline)) is not None:
            if event["event"] == name:
                return event
        raise AssertionError(f"tus-js-client ended without a {name!r} line: {self.said()}")

    def result(self, timeout: float = 180) -> dict[str, Any]:
        """The last line ("success" or "error") once tus-js-client has exited."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        code = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert self.events, f"tus-js-client printed nothing: {self.said()}"
        last = self.events[-1]
        assert (code, last["event"]) in ((0, "success"), (1, "error")), self.said()
        return last

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "request" and method in (None, e["method"])]

    def responses(self, method: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["event"] == "response" and method in (None, e["method"])
        ]

    def said(self) -> str:
        lines = "\n".join(json.dumps(e) for e in self.events)
        return f"\n{lines}\nstderr: {''.join(self.stderr)}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)


TusJsFactory = Callable[..., TusJs]


@pytest.fixture
def tus_js() -> Iterator[TusJsFactory]:
    """Start tus-js-client: `tus_js(server, client, path, chunkSize=..., metadata=...)`, the
    keyword arguments being upload.mjs's options; signed in as `client` with its token."""
    runs: list[TusJs] = []

    def start(server: Server, client: Client, path: Path, **options: Any) -> TusJs:
        run = TusJs(
            {
                "endpoint": f"{server.url}{TUS}",
                "file": str(path),
                "headers": {"Authorization": client.http.headers["Authorization"]},
                **options,
            }
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()
