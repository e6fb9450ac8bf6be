"""Fixtures: a real `chute serve` on loopback, its own data dir per server, users per test.

Contract test modules marked `pytestmark = pytest.mark.deployments` run over both
deployments (DESIGN §1): `embedded` (SQLite, the SQLite queue with its worker started by
`serve`, local disk) and `scaleout` (PostgreSQL, Redis with a `chute worker` started beside
`serve`, and S3 storage on SeaweedFS). Each scale-out server gets a database of its own
(`chute_t_<random>`, dropped after), a queue name of its own on Redis (its keys flushed
after) and a bucket of its own on the session's SeaweedFS (emptied and deleted after).
Without PostgreSQL or Redis the scale-out tests are skipped, unless `CI` is set: then
they fail. PostgreSQL and Redis with local disk are not a deployment of their own here.

S3 takes no part under 5 MiB but the last, so multi-chunk uploads use the deployment's
`chunk` (64 KiB embedded, 5 MiB on S3). `storage_holds` shows what a server's storage
holds, on either backend, for tests that check what is kept or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from huey.api import Huey
from sqlalchemy import create_engine, text

from chute.config import Settings
from chute.storage import Storage, make_storage
from chute.storage.local import LocalStorage
from chute.storage.s3 import S3Storage
from tests.factories import chunk_fields, split
from tests.s3_support import SeaweedFS, seaweedfs_running

ROOT = Path(__file__).resolve().parents[1]

DeploymentName = Literal["embedded", "scaleout"]
DEPLOYMENTS: tuple[DeploymentName, ...] = ("embedded", "scaleout")
# The chunk size of the tests' multi-chunk uploads: small on local disk, S3's least part
# size on S3 (SeaweedFS, like S3, refuses smaller parts but the last at completion).
SMALL_CHUNK = 64 * 1024
S3_PART = 5 * 1024 * 1024
# The services the scale-out tests use; each test server makes its own database and queue.
POSTGRES_URL = os.environ.get(
    "CHUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CHUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deployments: run the module's servers over every deployment (DESIGN §1)"
    )


# Under pytest-xdist (`make test` runs `pytest -n 4 --dist loadscope`), the unit of work a
# worker takes is a module's tests of one deployment: they share the module's server. The
# real-network tests share one pair of namespaces and one server: one unit. Units whose
# path starts with one of these go first, in this order: the longest, so that no worker
# is left with a long one at the end while the others idle.
LONG_FIRST = (
    "tests/net",
    "tests/webhooks/test_delivery.py",
    "tests/auth/test_oidc.py",
    "tests/tus/test_tus_js.py",
    "tests/api/test_tus.py",
    "tests/e2e/test_web_upload.py",
    "tests/jobs/test_engine.py",
    "tests/api/test_upload_robustness.py",
    "tests/test_cli_upload.py",
    "tests/api/test_openapi.py",
    "tests/client/test_api.py",
    "tests/test_admin_password.py",
    "tests/scaleout/",
    "tests/tus/test_tuspy.py",
    "tests/e2e/test_uppy.py",
    "tests/api/test_limits.py",
    "tests/storage/test_s3.py",
    "tests/api/test_upload_errors.py",
    "tests/web/",
    "tests/ops/",
)
_DEPLOYMENT_ID = re.compile(r"\[(embedded|scaleout)[-\]]")


def work_unit(nodeid: str) -> str:
    """The unit of work of a test under pytest-xdist: its module and deployment."""
    path = nodeid.split("::")[0]
    if path.startswith("tests/net/"):
        return "tests/net"
    found = _DEPLOYMENT_ID.search(nodeid)
    return f"{path}[{found.group(1)}]" if found else path


def _unit_rank(unit: str) -> int:
    return next((i for i, p in enumerate(LONG_FIRST) if unit.startswith(p)), len(LONG_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Stable: each unit's tests keep their order (and stay together).
        items.sort(key=lambda item: _unit_rank(work_unit(item.nodeid)))


@pytest.hookimpl(optionalhook=True)  # plain `pytest` works without pytest-xdist too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with `work_unit` as the scope, taken in the collection's order."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return ByUnit(config, log)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "deployments"
    ):
        metafunc.parametrize("deployment", DEPLOYMENTS, indirect=True, scope="module")


@dataclass(frozen=True)
class Deployment:
    """A deployment of DESIGN §1 that test servers run as; `store` is the S3-compatible
    store of the scale-out deployment."""

    name: DeploymentName
    store: SeaweedFS | None = None

    @property
    def s3(self) -> bool:
        return self.store is not None

    @property
    def chunk(self) -> int:
        """The chunk size of multi-chunk uploads: every chunk but the last is an S3 part."""
        return S3_PART if self.s3 else SMALL_CHUNK


EMBEDDED = Deployment("embedded")


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The deployment a module's servers run as: `embedded` unless the module is marked.
    SeaweedFS starts (once a session) only when a scale-out test first needs it."""
    name: DeploymentName = getattr(request, "param", "embedded")
    if name == "embedded":
        return EMBEDDED
    return Deployment(name, request.getfixturevalue("seaweedfs"))


@pytest.fixture(scope="module")
def chunk(deployment: Deployment) -> int:
    """The chunk size of the module's multi-chunk uploads (`Deployment.chunk`)."""
    return deployment.chunk


@cache
def postgres_down() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when it answers."""
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_URL} is not available ({type(exc).__name__})"
    return None


@cache
def redis_down() -> str | None:
    """Why the test Redis cannot be used, or None when it answers."""
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3) as conn:
            conn.ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} is not available ({type(exc).__name__})"
    return None


def require_services(*, postgres: bool = True, redis: bool = True) -> None:
    """Skip the calling test without PostgreSQL or Redis; in CI, fail it instead."""
    reason = (postgres and postgres_down()) or (redis and redis_down()) or None
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: the scale-out tests must run", pytrace=False)
    pytest.skip(f"scale-out deployment: {reason}")


def admin_engine() -> Any:
    """An engine on the test server's `test` database that runs CREATE/DROP DATABASE."""
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server; its URL. Dropped after."""
    name = f"chute_t_{secrets.token_hex(6)}"
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield engine.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                # FORCE: a killed server's connections may not be closed yet.
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def deployment_env(deployment: Deployment) -> Iterator[dict[str, str]]:
    """The CHUTE_* settings of a server of this deployment; its database, queue and bucket
    are removed after."""
    if deployment.store is None:
        yield {}
        return
    require_services()
    from chute.jobs.queue import make_huey
    from chute.webhooks.queue import queue_name as webhook_queue_name

    queue_name = f"chute_t_{secrets.token_hex(6)}"
    bucket = deployment.store.new_bucket()
    try:
        with postgres_database() as database_url:
            try:
                yield {
                    "CHUTE_DATABASE_URL": database_url,
                    "CHUTE_QUEUE_URL": REDIS_URL,
                    "CHUTE_QUEUE_NAME": queue_name,
                    **deployment.store.env(bucket, "chute"),
                }
            finally:
                for name in (queue_name, webhook_queue_name(queue_name)):
                    huey = make_huey(REDIS_URL, name)
                    huey.storage.flush_all()
                    huey.storage.pool.disconnect()
    finally:
        deployment.store.remove_bucket(bucket)


# Ports for test servers: below the kernel's ephemeral range (32768 and up), so no client
# socket of the tests can take a server's port while it restarts on it, and a slice of its
# own for each pytest-xdist worker, so two workers never hand out the same port.
PORT_BASE, PORT_SLICE, PORT_SLICES = 20000, 1500, 8


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else os.getpid()
    start = PORT_BASE + (index % PORT_SLICES) * PORT_SLICE
    return range(start, start + PORT_SLICE)


_PORTS = _port_slice()
_next_port = secrets.randbelow(len(_PORTS))


def free_port() -> int:
    """A loopback port nobody listens on, from this process's slice, not handed out again
    until the slice has gone round."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


@dataclass
class Server:
    """A running `chute serve` with its own data dir, and its job worker: the embedded one
    `serve` starts, or with the queue on Redis a `chute worker` started beside it (none
    with `--no-worker`, as with the embedded queue)."""

    data_dir: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    # The chunk size of multi-chunk uploads on this server's storage (`Deployment.chunk`).
    chunk: int = SMALL_CHUNK
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _users: int = 0
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scale_out(self) -> bool:
        return self.env.get("CHUTE_QUEUE_URL", "").startswith("redis://")

    @property
    def wants_worker(self) -> bool:
        """With the queue on Redis `serve` starts no worker: the fixture starts one."""
        return self.scale_out and "--no-worker" not in self.args

    @property
    def database_url(self) -> str:
        return self.env.get("CHUTE_DATABASE_URL") or f"sqlite:///{self.data_dir / 'chute.db'}"

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Rows of a query on the server's database, for what the API does not show."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params).all())
        finally:
            engine.dispose()

    def write_job(self, job_id: int, **columns: Any) -> None:
        """Write a job's columns straight into the database, as an older or buggy server
        might have stored them (names the API now refuses, say)."""
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                for column, value in columns.items():
                    conn.execute(
                        text(f"UPDATE jobs SET {column} = :value WHERE id = :id"),
                        {"value": value, "id": job_id},
                    )
        finally:
            engine.dispose()

    def queue(self) -> Huey:
        """The server's task queue, to look into (or lose tasks from) in tests."""
        from chute.jobs.queue import make_huey

        url = self.env.get("CHUTE_QUEUE_URL") or f"sqlite:///{self.data_dir / 'queue.db'}"
        return make_huey(url, self.env.get("CHUTE_QUEUE_NAME", "chute"))

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A `chute worker` process of this server, in a process group of its own."""
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "chute", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )

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
        if self.answers(self.process):
            if self.wants_worker and (self.worker is None or self.worker.poll() is not None):
                self.worker = self.start_worker()
            return
        raise RuntimeError(f"chute serve did not answer in 30 s:\n{self.log()}")

    def answers(self, process: subprocess.Popen[bytes], timeout: float = 30) -> bool:
        """Wait until the server answers /api/config; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        # One client for all the tries: each new one costs 40 ms of CPU (its SSL context).
        with httpx.Client(timeout=1) as http:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"chute serve exited:\n{self.log()}")
                try:
                    if http.get(f"{self.url}/api/config").status_code == 200:
                        return True
                except httpx.TransportError:
                    time.sleep(0.1)
        return False

    def close_clients(self) -> None:
        for http in self._clients:
            http.close()
        self._clients.clear()

    def stop(self, kill: bool = False) -> None:
        # Each whole process group: uvicorn, its worker processes and the job worker.
        for process in (self.process, self.worker):
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, 9 if kill else 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        self.worker = None

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
        """A user in the server's database, made by the function `chute user add` calls,
        in this process: the command costs a second of start-up, and tests/test_cli.py
        runs it for real. Before the first start (no schema yet) the command makes it."""
        self._users += 1
        name = name or f"user{self._users}"
        if self.process is None:
            result = self.cli("user", "add", name, stdin=password + "\n")
            assert result.returncode == 0, result.stderr
            return name
        from chute.auth.service import add_user
        from chute.db.session import make_engine, make_sessionmaker

        engine = make_engine(self.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                add_user(session, name, password)
        finally:
            engine.dispose()
        return name

    def client(self, name: str | None = None, password: str = "pw-for-tests") -> Client:
        """A new user, signed in with a bearer token."""
        name = self.add_user(name, password)
        http = httpx.Client(base_url=self.url, timeout=120)
        self._clients.append(http)
        answer = http.post("/api/auth/token", data={"username": name, "password": password})
        assert answer.status_code == 200, answer.text
        http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return Client(http, name, self.data_dir, self.env, self.chunk)


def storage_of(env: dict[str, str]) -> Storage:
    """The storage that a server with these CHUTE_* settings uses, opened by the test."""
    return _storage(tuple(sorted((k, v) for k, v in env.items() if k.startswith("CHUTE_"))))


# Opened once per settings: an S3 storage makes two boto3 sessions, about 0.4 s of CPU,
# and tests list the storage in polling loops.
@lru_cache(maxsize=16)
def _storage(settings: tuple[tuple[str, str], ...]) -> Storage:
    fields = {k.removeprefix("CHUTE_").lower(): v for k, v in settings}
    return make_storage(Settings.model_validate(fields))


@dataclass(frozen=True)
class Holding:
    """What a server's storage holds, read beside the server."""

    # Stored files, by key: "jobs/7/input.csv".
    files: frozenset[str]
    # Unfinished uploads, by storage id, with the bytes they hold: on local disk an upload's
    # directory (its file is preallocated as chunks arrive), on S3 a multipart upload's parts.
    uploads: dict[str, int]


def storage_holds(server: Server) -> Holding:
    """What the server's storage holds now, listed by the test: the data dir's files on
    local disk, the bucket's objects and multipart uploads on S3."""
    storage = storage_of(server.env)
    if isinstance(storage, S3Storage):
        return _s3_holds(storage)
    assert isinstance(storage, LocalStorage)
    objects, upload_dirs = storage.root / "objects", storage.root / "uploads"
    paths = [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []
    dirs = list(upload_dirs.iterdir()) if upload_dirs.exists() else []
    return Holding(
        frozenset(str(p.relative_to(objects)) for p in paths),
        {d.name: sum(p.stat().st_size for p in d.iterdir() if p.name != "locks") for d in dirs},
    )


def _s3_holds(storage: S3Storage) -> Holding:
    s3, bucket, prefix = storage.client, storage.bucket, storage.prefix
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    uploads = {}
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for upload in (u for page in pages for u in page.get("Uploads", [])):
        upload_id, key = upload["UploadId"], upload["Key"]
        parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
        # The storage id: "<UploadId> <key>" (chute/storage/s3.py).
        uploads[f"{upload_id} {key.removeprefix(prefix)}"] = sum(p["Size"] for p in parts)
    return Holding(frozenset(k.removeprefix(prefix) for k in keys), uploads)


@dataclass
class Client:
    http: httpx.Client
    username: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    chunk: int = SMALL_CHUNK

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

    def upload(self, job_id: int, data: bytes, chunk_size: int | None = None) -> None:
        """Send `data` in order, chunk by chunk (of the server's `chunk` unless told);
        every chunk must be taken."""
        chunks = split(data, chunk_size or self.chunk)
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
def make_server(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[ServerFactory]:
    """Start servers with extra CHUTE_* settings: `make_server(CHUTE_UPLOAD_EXPIRY="2")`."""
    with contextlib.ExitStack() as stack:
        servers: list[Server] = []

        def make(*args: str, start: bool = True, **settings: str) -> Server:
            base = tmp_path_factory.mktemp("chute")
            env = {
                **os.environ,
                "CHUTE_DATA_DIR": str(base / "data"),
                # Test machines may have little free disk; the reserve is tested on its own.
                "CHUTE_MIN_FREE_BYTES": "0",
                **stack.enter_context(deployment_env(deployment)),
                **settings,
            }
            server = Server(
                data_dir=base / "data", env=env, args=list(args), chunk=deployment.chunk
            )
            servers.append(server)
            if start:
                server.start()
            return server

        try:
            yield make
        finally:
            for server in servers:
                server.close_clients()
                server.stop(kill=True)


@contextlib.contextmanager
def serving(base: Path, deployment: Deployment = EMBEDDED, **settings: str) -> Iterator[Server]:
    """A server on its own data dir under `base`, with extra CHUTE_* (or other) settings."""
    with deployment_env(deployment) as extra:
        env = {
            **os.environ,
            "CHUTE_DATA_DIR": str(base / "data"),
            "CHUTE_MIN_FREE_BYTES": "0",
            **extra,
        }
        server = Server(data_dir=base / "data", env={**env, **settings}, chunk=deployment.chunk)
        try:
            server.start()
            yield server
        finally:
            server.close_clients()
            server.stop(kill=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, deployment: Deployment) -> Iterator[Server]:
    """One server shared by a module's tests; each test makes its own users and jobs."""
    with serving(tmp_path_factory.mktemp("chute-shared"), deployment) as srv:
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
