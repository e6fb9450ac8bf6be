"""The scale-out deployment end to end: two API processes on two ports and two workers,
sharing PostgreSQL, Redis and S3 (SeaweedFS), as on several machines.

One upload's chunks go to both APIs in parallel; the worker running the job is killed
mid-job; the job still runs to success exactly once, on the other worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Deployment, Server, deployment_env
from tests.factories import csv_bytes, sha256, split
from tests.s3_support import SeaweedFS

PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
PLUGINS = ROOT / "tests" / "plugins"


class Cluster:
    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.env = env
        self.apis: list[Server] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, apis: int, workers: int) -> None:
        for i in range(apis):
            data = self.base / f"api-{i}" / "data"
            data.parent.mkdir(parents=True)
            server = Server(
                data_dir=data, env={**self.env, "CHUTE_DATA_DIR": str(data)}, args=["--no-worker"]
            )
            server.start()
            self.apis.append(server)
        for _ in range(workers):
            self.start_worker()

    def start_worker(self) -> subprocess.Popen[bytes]:
        i = len(self.workers)
        data = self.base / f"worker-{i}" / "data"
        data.parent.mkdir(parents=True)
        with (self.base / f"worker-{i}.log").open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "chute", "worker"],
                env={**self.env, "CHUTE_DATA_DIR": str(data)},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data.parent,
            )
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for api in self.apis:
            api.close_clients()
            api.stop(kill=True)
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.base.glob("*.log")))


@pytest.fixture
def cluster(tmp_path: Path, seaweedfs: SeaweedFS) -> Iterator[Cluster]:
    with deployment_env(Deployment("scaleout", seaweedfs)) as scaleout:
        env = {
            **os.environ,
            **scaleout,
            "CHUTE_MIN_FREE_BYTES": "0",
            # Quick to notice a killed worker, and to hand its job to the other one.
            "CHUTE_HEARTBEAT_INTERVAL": "0.2",
            "CHUTE_HEARTBEAT_TIMEOUT": "2",
            "CHUTE_SWEEP_INTERVAL": "0.5",
            "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
        }
        cluster = Cluster(tmp_path, env)
        try:
            cluster.start(apis=2, workers=2)
            yield cluster
        finally:
            cluster.stop()


def journal_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_apis_two_workers_a_killed_worker_and_the_job_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, two = cluster.apis
    client = one.client()
    token = client.http.headers["Authorization"]
    other = httpx.Client(base_url=two.url, headers={"Authorization": token}, timeout=60)
    apis = [client.http, other]

    data = csv_bytes(1_000_000)  # about 26 MB: five 5 MiB chunks and a shorter last one
    chunks = split(data, PART)
    journal = tmp_path / "journal"
    job_id = client.new_job(
        "scale-out", kind="example", params={"seconds": 6, "journal": str(journal)}
    )

    def send(index: int) -> httpx.Response:
        return apis[index % 2].post(
            f"/api/job/{job_id}/upload-data",
            data={
                "chunk_index": str(index),
                "total_chunks": str(len(chunks)),
                "chunk_sha256": sha256(chunks[index]),
            },
            files={"file": ("data.csv", chunks[index], "text/csv")},
        )

    # Chunk 0 first (it fixes the chunk size), then the rest spread over both APIs at once.
    assert send(0).status_code == 200
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(1, len(chunks))))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["message"].endswith("job started") for a in answers) == 1
    # Both APIs took chunks.
    assert {i % 2 for i in range(1, len(chunks))} == {0, 1}

    # Wait for the job to start on a worker, then kill that worker.
    deadline = time.monotonic() + 30
    while not journal_lines(journal):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    job_pid = int(journal_lines(journal)[1])
    victim = next(w for w in cluster.workers if _is_parent_of(w.pid, job_pid))
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    job = client.wait_for(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "succeeded", (job, cluster.logs())
    assert job["result"] == {"lines": data.count(b"\n")}
    assert job["attempts"] == 2
    # Started twice (the first run killed), finished once, by another process.
    lines = journal_lines(journal)
    assert lines[0::2] == ["start", "start", "end"], lines
    assert lines[1] != lines[3] == lines[5]
    # The file in the store is the upload, byte for byte, seen through either API.
    assert client.stored(job_id) == (len(data), sha256(data))
    assert other.get(f"/api/job/{job_id}").json()["status"] == "succeeded"
    other.close()


def _is_parent_of(parent: int, pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat[stat.rindex(")") + 2 :].split()[1]) == parent
