"""`GET /metrics` (DESIGN §8), scraped and read with prometheus_client's own text parser.

The main test runs a real `chute serve --workers 2` and uploads through both API
processes (each chunk on a connection of its own, which the kernel hands to either), with
bad chunks among them, lets the jobs run in the embedded worker, and checks one scrape's
sums against what it did. Which process took what is read from each process's own file
in the server's metrics directory (with the same library's collector), so the test knows
both took part and the scrape added them up. The queue gauges and the route labels are
checked in-process too, where it costs milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import update

from chute.auth.service import add_user
from chute.db.migrate import upgrade
from chute.db.models import Job, JobStatus, User, utcnow
from chute.db.session import make_engine, make_sessionmaker
from chute.metrics import DatabaseCollector
from chute.serve import METRICS_DIR_ENV, metrics_dir
from tests.api.inprocess import App, app_in_process
from tests.conftest import (
    Server,
    ServerFactory,
    free_port,
    postgres_database,
    require_services,
)
from tests.factories import chunk_fields, csv_bytes, csv_of_size, split

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TUS = {"Tus-Resumable": "1.0.0"}
UPLOAD_DATA = "/api/job/{job_id}/upload-data"


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, read by prometheus_client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A series' samples by one label's value, the others being one value each."""
    return {
        dict(labels)[label]: found for (n, labels), found in samples.items() if n == name and found
    }


def admin_headers(server: Server) -> dict[str, str]:
    """The first admin's bearer token: `chute serve` put its password in the data dir."""
    password = (server.data_dir / "initial-admin-password").read_text().strip()
    answer = httpx.post(
        f"{server.url}/api/auth/token", data={"username": "admin", "password": password}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    answer = httpx.get(f"{url}/metrics", headers=headers or {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def per_process(metrics_dir: Path, work: Path, name: str, **labels: str) -> dict[int, float]:
    """A counter's value in each process's own file (`counter_<pid>.db`), each read alone
    by prometheus_client's multi-process collector from a copy of that one file."""
    found = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        alone = work / f"{pid}-{time.monotonic_ns()}"
        alone.mkdir()
        shutil.copy(path, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        found[pid] = value(parse_registry(registry), name, **labels)
    return found


def parse_registry(registry: Collector) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def fresh(server: Server, headers: dict[str, str]) -> httpx.Client:
    """A client on a new connection: the kernel gives it to either API process."""
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def send_chunk(
    server: Server, headers: dict[str, str], job_id: int, index: int, total: int, data: bytes
) -> httpx.Response:
    with fresh(server, headers) as http:
        return http.post(
            f"/api/job/{job_id}/upload-data",
            data=chunk_fields(index, total, data),
            files={"file": ("data.csv", data, "text/csv")},
        )


def test_two_api_processes_report_one_total(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server("--workers", "2")
    (metrics_dir,) = (path for path in (server.data_dir / "metrics").iterdir() if path.is_dir())
    admin = admin_headers(server)
    user = server.client()
    auth = {"Authorization": user.http.headers["Authorization"]}

    # Good chunks, each on a new connection, until both API processes have recorded some
    # (the kernel gives each to either with even odds: one round of eight all but always
    # does; five make it certain enough).
    jobs: list[int] = []
    chunks = sent = 0
    for round_ in range(5):
        job_id = user.new_job(f"metrics {round_}")
        parts = split(csv_of_size(8 * server.chunk - 100, seed=round_), server.chunk)
        for index, part in enumerate(parts):
            answer = send_chunk(server, auth, job_id, index, len(parts), part)
            assert answer.status_code == 200, answer.text
        jobs.append(job_id)
        chunks += len(parts)
        sent += sum(len(part) for part in parts)
        recorded = per_process(metrics_dir, tmp_path, "chute_upload_chunks_recorded_total")
        if sum(1 for n in recorded.values() if n) >= 2:
            break
    assert len([n for n in recorded.values() if n]) >= 2, recorded
    assert sum(recorded.values()) == chunks

    # One upload with tus: a part recorded by the same core.
    tus_data = csv_bytes(500)
    with fresh(server, auth) as http:
        made = http.post(
            "/api/tus/",
            headers={**TUS, "Upload-Length": str(len(tus_data)), "Upload-Metadata": "name dHVz"},
        )
        assert made.status_code == 201, made.text
        url, tus_job = made.headers["Location"], int(made.headers["Chute-Job-Id"])
        patch = {**TUS, "Content-Type": "application/offset+octet-stream"}
        wrong = http.patch(url, content=b"x", headers={**patch, "Upload-Offset": "5"})
        assert wrong.status_code == 409, wrong.text
        done = http.patch(url, content=tus_data, headers={**patch, "Upload-Offset": "0"})
        assert done.status_code == 204, done.text

    # Refused chunks, one of each reason.
    bad_job = user.new_job("refused")
    good = csv_bytes(10)
    with fresh(server, auth) as http:
        mismatch = http.post(
            f"/api/job/{bad_job}/upload-data",
            data={**chunk_fields(0, 1, good), "chunk_sha256": "0" * 64},
            files={"file": ("data.csv", good, "text/csv")},
        )
    assert mismatch.status_code == 422, mismatch.text
    assert send_chunk(server, auth, 987654321, 0, 1, good).status_code == 404
    assert send_chunk(server, {}, jobs[0], 0, 1, good).status_code == 401
    total = len(split(csv_of_size(8 * server.chunk - 100, seed=0), server.chunk))
    conflict = send_chunk(server, auth, jobs[0], 0, total, csv_bytes(10, seed=99))
    assert conflict.status_code == 409, conflict.text

    for job_id in [*jobs, tus_job]:
        assert user.wait_for(job_id, "succeeded", "failed", timeout=60)["status"] == "succeeded"

    # Labels are templates: no raw path, id or made-up method makes a series of its own.
    with fresh(server, {}) as http:
        assert http.get("/no/such/path-4242").status_code == 404
        assert http.request("PROPFIND", "/api/config").status_code == 405

    # Only an admin reads the figures.
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers=auth).status_code == 403

    text = httpx.get(f"{server.url}/metrics", headers=admin).text
    assert "path-4242" not in text and "987654321" not in text and "PROPFIND" not in text
    samples = parse(text)
    assert value(samples, "chute_upload_bytes_received_total") == sent + len(tus_data)
    assert value(samples, "chute_upload_chunks_recorded_total") == chunks + 1
    assert value(samples, "chute_uploads_completed_total") == len(jobs) + 1
    assert value(samples, "chute_uploads_expired_total") == 0
    assert by_label(samples, "chute_upload_chunks_refused_total", "reason") == {
        "CHECKSUM_MISMATCH": 1,
        "JOB_NOT_FOUND": 1,
        "NOT_AUTHENTICATED": 1,
        "CHUNK_CONFLICT": 1,
        "OFFSET_DIFFERS": 1,
    }

    def requests(route: str, method: str) -> dict[str, float]:
        return {
            dict(labels)["status"]: found
            for (name, labels), found in samples.items()
            if name == "chute_http_requests_total"
            and dict(labels)["route"] == route
            and dict(labels)["method"] == method
        }

    assert requests(UPLOAD_DATA, "POST") == {
        "200": chunks,
        "422": 1,
        "404": 1,
        "401": 1,
        "409": 1,
    }
    assert requests("/api/tus/{tus_id}", "PATCH") == {"204": 1, "409": 1}
    assert requests("/api/tus/", "POST") == {"201": 1}
    assert requests("/api/job", "POST") == {"201": len(jobs) + 1}
    assert requests("unmatched", "GET") == {"404": 1}
    assert requests("/api/config", "other") == {"405": 1}
    assert requests("/metrics", "GET") == {"401": 1, "403": 1}
    timed = value(
        samples,
        "chute_http_request_duration_seconds_count",
        route=UPLOAD_DATA,
        method="POST",
        status="200",
    )
    assert timed == chunks

    # Jobs: the worker's runs (the embedded worker counts in the same directory), the
    # database's statuses, and an empty queue.
    ran = value(samples, "chute_job_run_duration_seconds_count", kind="profile", status="succeeded")
    assert ran == len(jobs) + 1
    assert by_label(samples, "chute_jobs", "status") == {
        "succeeded": len(jobs) + 1,
        "awaiting_upload": 1,
    }
    assert value(samples, "chute_queue_depth") == 0
    assert value(samples, "chute_queue_oldest_age_seconds") == 0

    # Whichever process takes the scrape, the sums are the same: scraped on new
    # connections until each API process has answered some.
    for _ in range(20):
        again = scrape(server.url, admin)
        assert value(again, "chute_upload_bytes_received_total") == sent + len(tus_data)
        answered = per_process(
            metrics_dir,
            tmp_path,
            "chute_http_requests_total",
            route="/metrics",
            method="GET",
            status="200",
        )
        if len([n for n in answered.values() if n]) >= 2:
            break
    assert len([n for n in answered.values() if n]) >= 2, answered


def test_public_metrics_and_a_workers_own_port(make_server: ServerFactory) -> None:
    """CHUTE_METRICS_PUBLIC: no sign-in. A worker that `serve` did not start (another host's,
    in scale-out) answers for its runs and its sweeper's expiries on `--metrics-port`; the
    API's figures of jobs come from the database, which is right wherever the worker ran."""
    server = make_server(
        "--no-worker",
        CHUTE_METRICS_PUBLIC="1",
        CHUTE_UPLOAD_EXPIRY="1",
        CHUTE_SWEEP_INTERVAL="0.2",
    )
    port = free_port()
    assert server.log_path is not None
    with server.log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "chute", "worker", "--metrics-port", str(port)],
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.data_dir.parent,
            start_new_session=True,
        )
    try:
        user = server.client()
        job_id = user.new_job("on another worker")
        user.upload(job_id, csv_bytes(300))
        left = user.new_job("left unfinished")
        data = csv_bytes(300)
        assert user.send_chunk(left, 0, 2, data[:100]).status_code == 200
        assert user.wait_for(job_id, "succeeded", "failed", timeout=60)["status"] == "succeeded"
        user.wait_for(left, "upload_expired", timeout=30)
        own = scrape(f"http://127.0.0.1:{port}")
        assert (
            value(own, "chute_job_run_duration_seconds_count", kind="profile", status="succeeded")
            == 1
        )
        assert value(own, "chute_uploads_expired_total") == 1
        api = scrape(server.url)  # no token
        assert value(api, "chute_jobs", kind="profile", status="succeeded") == 1
        assert value(api, "chute_jobs", kind="profile", status="upload_expired") == 1
        assert value(api, "chute_uploads_completed_total") == 1
        assert value(api, "chute_upload_chunks_recorded_total") == 2
        assert (
            value(api, "chute_job_run_duration_seconds_count", kind="profile", status="succeeded")
            == 0
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)


# --- in-process: the collector and the labels ---------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    yield from app_in_process(tmp_path)


def admin_client(app: App) -> httpx.Client:
    client = app.client()
    with app.runtime.sessions() as session:
        session.execute(update(User).values(is_admin=True))
        session.commit()
    return client


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_queue_depth_and_the_oldest_queued_jobs_age_come_from_the_database(
    database: str, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            require_services(redis=False)
            url = stack.enter_context(postgres_database())
        else:
            url = f"sqlite:///{tmp_path / 'chute.db'}"
        upgrade(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        now = utcnow()
        with sessions() as session:
            user = add_user(session, "someone", "pw-for-tests")
            for kind, status, age in [
                ("profile", JobStatus.QUEUED, 100),
                ("profile", JobStatus.QUEUED, 10),
                ("other", JobStatus.QUEUED, 50),
                ("profile", JobStatus.RUNNING, 500),
                ("profile", JobStatus.FAILED, 900),
            ]:
                session.add(
                    Job(
                        user_id=user.id,
                        name=f"{status} {age}",
                        kind=kind,
                        status=status,
                        updated_at=now - timedelta(seconds=age),
                    )
                )
            session.commit()
        samples = parse_registry(DatabaseCollector(sessions, ["profile"]))
    assert value(samples, "chute_queue_depth") == 3
    assert 100 <= value(samples, "chute_queue_oldest_age_seconds") < 130
    assert by_label(samples, "chute_jobs", "status") == {"queued": 2, "running": 1, "failed": 1}
    assert value(samples, "chute_jobs", kind="profile", status="queued") == 2
    # A kind the server no longer runs still shows while it has jobs.
    assert value(samples, "chute_jobs", kind="other", status="queued") == 1
    # Every status of every kind the server runs is a series, at 0 until a job has it.
    assert ("chute_jobs", frozenset({("kind", "profile"), ("status", "cancelled")})) in samples
    assert ("chute_jobs", frozenset({("kind", "other"), ("status", "cancelled")})) not in samples


def test_an_empty_queue_is_0_deep_and_0_old(app: App) -> None:
    samples = scrape_in_process(admin_client(app))
    assert value(samples, "chute_queue_depth") == 0
    assert value(samples, "chute_queue_oldest_age_seconds") == 0


def scrape_in_process(client: httpx.Client) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return parse(answer.text)


def test_routes_are_labelled_by_their_templates(app: App) -> None:
    client = admin_client(app)
    before = scrape_in_process(client)
    assert client.get("/api/job/123456789").status_code == 404
    assert client.get("/static/nothing/here.js").status_code == 404
    assert client.get("/api/nothing-here").status_code == 404
    # Refused before routing (over the body limit): still its route's label.
    assert client.post("/api/job", content=b"x" * (app.settings.max_body_bytes + 1)).status_code
    after = scrape_in_process(client)

    def grew(route: str, method: str, status: str) -> float:
        labels = {"route": route, "method": method, "status": status}
        return value(after, "chute_http_requests_total", **labels) - value(
            before, "chute_http_requests_total", **labels
        )

    assert grew("/api/job/{job_id}", "GET", "404") == 1
    assert grew("/static/{path}", "GET", "404") == 1
    assert grew("unmatched", "GET", "404") == 1
    assert grew("/api/job", "POST", "413") == 1
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(route and ("123456789" in route or "nothing" in route) for route in routes)


def test_a_start_removes_only_the_metrics_dirs_of_servers_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `chute serve` holds a lock beside its directory while it runs; the kernel lets
    go when it dies (SIGKILL too), and the next start removes what it left."""
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    root = tmp_path / "metrics"
    root.mkdir()
    gone = root / "serve-1-aaaa"
    gone.mkdir()
    (gone / "counter_1.db").write_bytes(b"left by a killed server")
    (root / "serve-1-aaaa.lock").touch()
    half = root / "serve-2-bbbb"  # its server died while removing it: no lock left
    half.mkdir()
    live = root / "serve-3-cccc"
    live.mkdir()
    (live / "counter_3.db").write_bytes(b"a running server's")
    live_lock = root / "serve-3-cccc.lock"
    live_lock.touch()
    with live_lock.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the running server holds it
        with metrics_dir(tmp_path) as mine:
            assert os.environ[METRICS_DIR_ENV] == str(mine)
            assert list(mine.iterdir()) == []
            assert sorted(p.name for p in root.iterdir()) == sorted(
                [live.name, live_lock.name, mine.name, f"{mine.name}.lock"]
            )
        assert sorted(p.name for p in root.iterdir()) == [live.name, live_lock.name]
    assert METRICS_DIR_ENV not in os.environ
    assert (live / "counter_3.db").read_bytes() == b"a running server's"
