"""`GET /healthz` and `GET /readyz` against real servers and real dependencies.

Readiness must turn 503 within 5 s when the database, the storage or the queue stops
answering, and come back by itself. The scale-out test starts its own PostgreSQL, Redis
and SeaweedFS on free ports (never the machine's shared ones) and freezes each in turn
with SIGSTOP: a dependency that hangs is the hard case, as nothing answers, not even a
refusal. The embedded test fills the data dir's own small file system.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port, serving
from tests.s3_support import start_seaweedfs

MiB = 1024 * 1024
# What the issue asks: not ready within 5 s of a part no longer answering.
NOT_READY_WITHIN = 5.0
BACK_WITHIN = 60.0


def probe(server: Server, path: str = "/readyz") -> httpx.Response:
    return httpx.get(f"{server.url}{path}", timeout=NOT_READY_WITHIN + 5)


def wait_ready(server: Server, within: float = BACK_WITHIN) -> None:
    deadline = time.monotonic() + within
    while (answer := probe(server)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    assert answer.json() == {"status": "ready"}


def seconds_until_not_ready(server: Server) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    while True:
        answer = probe(server)
        elapsed = time.monotonic() - started
        if answer.status_code == 503 or elapsed > 3 * NOT_READY_WITHIN:
            return elapsed, answer
        time.sleep(0.1)


# --- embedded: the data dir's disk fills --------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB file system of its own (tmpfs), so filling it touches nothing else."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_healthz_answers_and_readyz_follows_the_data_dirs_disk(small_disk: Path) -> None:
    with serving(small_disk, CHUTE_MIN_FREE_BYTES=str(16 * MiB)) as server:
        assert probe(server, "/healthz").json() == {"status": "ok"}
        wait_ready(server, within=10)
        free = shutil.disk_usage(small_disk).free
        filler = small_disk / "filler"
        with filler.open("wb") as f:  # leaves 8 MiB: under the 16 MiB reserve
            f.write(b"\0" * (free - 8 * MiB))
        elapsed, answer = seconds_until_not_ready(server)
        assert answer.status_code == 503, answer.text
        assert elapsed < NOT_READY_WITHIN
        assert answer.json()["failing"] == ["storage"]
        assert answer.headers["cache-control"] == "no-store"
        # Alive all the same: only readiness follows the parts.
        assert probe(server, "/healthz").status_code == 200
        filler.unlink()
        wait_ready(server, within=10)


# --- scale-out: PostgreSQL, Redis and SeaweedFS of the test's own -------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc (PostgreSQL's backends each start a
    session of their own, so its process group is not enough)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name may hold spaces; the fields after its ")" do not.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return tree


class Service:
    """A dependency's processes, which the test can freeze (SIGSTOP) and thaw (SIGCONT)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        for pid in process_tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        tree = process_tree(self.process.pid)
        for signum in (signal.SIGCONT, signal.SIGKILL):
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        self.process.wait(10)


def wait_until(ready: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.1)


def start_postgres(data: Path, port: int) -> Service:
    """A PostgreSQL cluster of its own in `data`, a directory the `postgres` account can
    reach (PostgreSQL refuses to run as root)."""
    bin_dir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    shutil.chown(data, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres", "--no-sync"], check=True, capture_output=True)  # fmt: skip
    process = subprocess.Popen(
        [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def answers() -> bool:
        done = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        )
        return done.returncode == 0

    wait_until(answers, "PostgreSQL")
    return Service("database", process)


def start_redis(port: int) -> Service:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def answers() -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    wait_until(answers, "Redis")
    return Service("queue", process)


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[Service]]]:
    if os.geteuid() != 0 or shutil.which("redis-server") is None:
        pytest.skip("needs root (to run PostgreSQL as its account) and redis-server")
    pg_port, redis_port = free_port(), free_port()
    services: list[Service] = []
    # Outside pytest's temporary directories, which only root may enter.
    pg_data = Path(tempfile.mkdtemp(prefix="chute-test-pg-"))
    try:
        services.append(start_postgres(pg_data, pg_port))
        services.append(start_redis(redis_port))
        store = start_seaweedfs(tmp_path / "s3", free_port)
        services.append(Service("storage", store.process))
        bucket = store.new_bucket()
        env = {
            "CHUTE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/postgres",
            "CHUTE_QUEUE_URL": f"redis://127.0.0.1:{redis_port}/0",
            **store.env(bucket, "chute"),
        }
        yield env, services
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(pg_data, ignore_errors=True)


def test_readyz_turns_503_within_5_s_of_each_part_hanging_and_comes_back(
    own_services: tuple[dict[str, str], list[Service]], tmp_path: Path
) -> None:
    env, services = own_services
    (tmp_path / "chute").mkdir()
    with serving(tmp_path / "chute", **env) as server:
        wait_ready(server)
        for service in services:
            service.freeze()
            try:
                elapsed, answer = seconds_until_not_ready(server)
                assert answer.status_code == 503, f"{service.name}: {answer.text}"
                assert elapsed < NOT_READY_WITHIN, (service.name, elapsed)
                assert answer.json()["failing"] == [service.name]
                assert service.name in answer.json()["detail"]
                assert probe(server, "/healthz").status_code == 200
            finally:
                service.thaw()
            wait_ready(server)
