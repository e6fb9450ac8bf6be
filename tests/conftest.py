"""Fixtures: a real `chute serve` on loopback, its own data dir per server, users per test."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute.config import Settings
from chute.storage import Storage, make_storage
from tests.factories import chunk_fields, split
from tests.s3_support import SeaweedFS, seaweedfs_running

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `chute serve` (API and embedded worker) with its own data dir."""

    data_dir: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _users: int = 0
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, same_port: bool = False) -> None:
        """Start; `same_port`: where the last run listened, as a restarted service would."""
        if not (same_port and self.port):
            self.port = free_port()
        env = {**self.env, "CHUTE_PORT": str(self.port)}
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chute", "serve", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chute serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/config", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"chute serve did not answer in 30 s:\n{self.log()}")

    def close_clients(self) -> None:
        for http in self._clients:
            http.close()
        self._clients.clear()

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The whole process group: uvicorn, its worker processes and the job worker.
        os.killpg(self.process.pid, 9 if kill else 15)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chute", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.data_dir.parent,
            timeout=60,
        )

    def add_user(self, name: str | None = None, password: str = "pw-for-tests") -> str:
        self._users += 1
        name = name or f"user{self._users}"
        result = self.cli("user", "add", name, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        return name

    def client(self, name: str | None = None, password: str = "pw-for-tests") -> Client:
        """A new user, signed in with a bearer token."""
        name = self.add_user(name, password)
        http = httpx.Client(base_url=self.url, timeout=120)
        self._clients.append(http)
        answer = http.post("/api/auth/token", data={"username": name, "password": password})
        assert answer.status_code == 200, answer.text
        http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return Client(http, name, self.data_dir, self.env)


def storage_of(env: dict[str, str]) -> Storage:
    """The storage that a server with these CHUTE_* settings uses, opened by the test."""
    fields = {k.removeprefix("CHUTE_").lower(): v for k, v in env.items() if k.startswith("CHUTE_")}
    return make_storage(Settings.model_validate(fields))


@dataclass
class Client:
    http: httpx.Client
    username: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def stored(self, job_id: int) -> tuple[int, str]:
        """Size and SHA-256 of a job's assembled input file, read from the server's storage."""
        env = self.env or {"CHUTE_DATA_DIR": str(self.data_dir)}
        digest = hashlib.sha256()
        size = 0
        with storage_of(env).open(f"jobs/{job_id}/input.csv") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def new_job(self, name: str = "test job", **body: Any) -> int:
        answer = self.http.post("/api/job", json={"name": name, **body})
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def send_chunk(
        self,
        job_id: int,
        index: int,
        total: int,
        data: bytes,
        *,
        checksum: bool = True,
        filename: str = "data.csv",
        **extra: object,
    ) -> httpx.Response:
        return self.http.post(
            f"/api/job/{job_id}/upload-data",
            data=chunk_fields(index, total, data if checksum else None, **extra),
            files={"file": (filename, data, "text/csv")},
        )

    def upload(self, job_id: int, data: bytes, chunk_size: int = 64 * 1024) -> None:
        """Send `data` in order, chunk by chunk; every chunk must be taken."""
        chunks = split(data, chunk_size)
        for index, chunk in enumerate(chunks):
            answer = self.send_chunk(job_id, index, len(chunks), chunk)
            assert answer.status_code == 200, answer.text

    def job(self, job_id: int) -> dict[str, Any]:
        answer = self.http.get(f"/api/job/{job_id}")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def wait_for(self, job_id: int, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']}, wanted {statuses}")
            time.sleep(0.1)


ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start servers with extra CHUTE_* settings: `make_server(CHUTE_UPLOAD_EXPIRY="2")`."""
    servers: list[Server] = []

    def make(*args: str, start: bool = True, **settings: str) -> Server:
        base = tmp_path_factory.mktemp("chute")
        env = {
            **os.environ,
            "CHUTE_DATA_DIR": str(base / "data"),
            # Test machines may have little free disk; the reserve is tested on its own.
            "CHUTE_MIN_FREE_BYTES": "0",
            **settings,
        }
        server = Server(data_dir=base / "data", env=env, args=list(args))
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.close_clients()
        server.stop(kill=True)


@contextlib.contextmanager
def serving(base: Path, **settings: str) -> Iterator[Server]:
    """A server on its own data dir under `base`, with extra CHUTE_* (or other) settings."""
    env = {**os.environ, "CHUTE_DATA_DIR": str(base / "data"), "CHUTE_MIN_FREE_BYTES": "0"}
    server = Server(data_dir=base / "data", env={**env, **settings})
    server.start()
    try:
        yield server
    finally:
        server.close_clients()
        server.stop(kill=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by a module's tests; each test makes its own users and jobs."""
    with serving(tmp_path_factory.mktemp("chute-shared")) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Client:
    return server.client()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3-compatible server (SeaweedFS), started once per test session."""
    with seaweedfs_running(tmp_path_factory.mktemp("seaweedfs"), free_port) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A fresh, empty bucket for one test."""
    return seaweedfs.new_bucket()
