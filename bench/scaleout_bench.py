"""Upload benchmark of the scale-out deployment, beside the embedded default's.

On one generated CSV file (1 GiB by default), sent in 100 MiB chunks with 3 in flight,
sha256 with every chunk, in the same run, alternating:
- **embedded**: `chute serve --workers 2` on SQLite, local disk and the SQLite queue;
- **scale-out**: two separate `chute serve` processes on two ports (as two machines
  behind a balancer would be), on PostgreSQL, Redis and an S3-compatible store
  (SeaweedFS, started here on loopback); the three connections are spread over both.

Also, as the store's own ceiling on this machine, the same chunks sent straight to
SeaweedFS with boto3 as the parts of one multipart upload, 3 at once, from memory.

Both deployments run without a job worker: this measures the upload (bench/job_bench.py measures the
job). Every upload is checked (one completing answer, every chunk's SHA-256 recorded,
the job queued). Reported: MB/s (median), and every server process's peak RSS.

SeaweedFS runs on the same machine as Chute and the client, so on a small machine the
scale-out figure is bounded by the CPU the three share; it is no production figure.

    .venv/bin/python bench/scaleout_bench.py [--size-gib 1] [--repeat 3]

Needs PostgreSQL and Redis (as the tests do: CHUTE_TEST_POSTGRES_URL, CHUTE_TEST_REDIS_URL)
and the dev extra (the `weed` binary). Exit status 2 when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from rawhttp import Source, send_file
from servers import ProcessMemory, Server, free_port, running
from sqlalchemy import create_engine, text
from upload_bench import (
    MB,
    PROJECT_DIR,
    PYTHON,
    BenchError,
    GiB,
    MiB,
    _check_answers,
    _check_stored,
    _create_job,
    _delete_job,
    _sign_in,
    chute_env,
    hash_source,
    machine,
    warm,
    write_csv,
)

sys.path.insert(0, str(PROJECT_DIR))
from tests.s3_support import SeaweedFS, seaweedfs_running

POSTGRES_URL = os.environ.get(
    "CHUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CHUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_FLIGHT = 3
CHUNK = 100 * MiB


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    name = f"chute_bench_{secrets.token_hex(6)}"
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield engine.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def redis_queue() -> Iterator[str]:
    from chute.jobs.queue import make_huey

    name = f"chute_bench_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        huey = make_huey(REDIS_URL, name)
        huey.storage.flush_all()
        huey.storage.pool.disconnect()


def upload_once(
    servers: Sequence[Server], ports: Sequence[int], token: str, source: Source
) -> tuple[float, list[tuple[int, ProcessMemory]]]:
    """One upload spread over `ports`: its MB/s, and each server process's peak (by port)."""
    for server in servers:
        server.reset_peaks()
    job_id = _create_job(ports[0], token)
    warm(source)
    run = send_file(ports, f"/api/job/{job_id}/upload-data", token, source, IN_FLIGHT)
    run.job_id = job_id
    _check_answers(run, job_id)
    _check_stored(ports[0], token, job_id, source)
    memory = [(server.port, m) for server in servers for m in server.memory()]
    _delete_job(ports[0], token, job_id)
    return run.bytes_per_second, memory


def store_alone(s3: SeaweedFS, bucket: str, source: Source) -> float:
    """MB/s of the store by itself: the file's chunks as the parts of one multipart upload,
    3 at once, with boto3 from memory (read beforehand) - the store's own ceiling here."""
    client = s3.client()
    parts = []
    with source.path.open("rb") as f:
        for index in range(source.total_chunks):
            offset, length = source.chunk(index)
            f.seek(offset)
            parts.append(f.read(length))
    key = "store-alone/bench.csv"
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def put(index: int) -> dict[str, Any]:
        answer = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=index + 1, Body=parts[index]
        )
        return {"PartNumber": index + 1, "ETag": answer["ETag"]}

    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        done = list(pool.map(put, range(len(parts))))
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    seconds = time.perf_counter() - started
    client.delete_object(Bucket=bucket, Key=key)
    return source.size / seconds


def embedded(work: Path) -> Server:
    port = free_port()
    env = chute_env(work / "embedded", port, CHUTE_CHUNK_SIZE=str(CHUNK))
    argv = [PYTHON, "-m", "chute", "serve", "--no-worker", "--workers", "2"]
    return Server(argv, env, port, 2, work / "embedded.log")


def scale_out(work: Path, s3: SeaweedFS, bucket: str, database: str, queue: str) -> list[Server]:
    settings = {
        **s3.env(bucket, "chute"),
        "CHUTE_DATABASE_URL": database,
        "CHUTE_QUEUE_URL": REDIS_URL,
        "CHUTE_QUEUE_NAME": queue,
        "CHUTE_CHUNK_SIZE": str(CHUNK),
    }
    servers = []
    for i in range(2):
        port = free_port()
        data = work / f"api-{i}"
        if i == 0:  # adds the bench user to the shared database
            env = chute_env(data, port, **settings)
        else:
            env = {**servers[0].env, "CHUTE_DATA_DIR": str(data), "CHUTE_PORT": str(port)}
        argv = [PYTHON, "-m", "chute", "serve"]  # the queue is on Redis: no worker
        servers.append(Server(argv, env, port, 1, work / f"api-{i}.log"))
    return servers


def measure(work: Path, size: int, repeat: int) -> dict[str, Any]:
    csv = work / "bench.csv"
    print(f"writing a {size / GiB:.1f} GiB CSV file ...", flush=True)
    write_csv(csv, size)
    source = hash_source(csv, size, CHUNK)
    results: dict[str, Any] = {"embedded": [], "scale-out": [], "store alone": [], "peaks": {}}
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(seaweedfs_running(work / "seaweedfs", free_port))
        print(f"SeaweedFS answered after {s3.startup_seconds:.1f} s", flush=True)
        database = stack.enter_context(postgres_database())
        queue = stack.enter_context(redis_queue())
        bucket = s3.new_bucket()
        setups = {
            "embedded": [embedded(work)],
            "scale-out": scale_out(work, s3, bucket, database, queue),
        }
        for servers in setups.values():
            for server in servers:
                stack.enter_context(running(server, PROJECT_DIR))
        tokens = {name: _sign_in(servers[0].port) for name, servers in setups.items()}
        for i in range(repeat):
            for name, servers in setups.items():
                ports = [server.port for server in servers]
                speed, memory = upload_once(servers, ports, tokens[name], source)
                results[name].append(speed)
                peaks = results["peaks"].setdefault(name, {})
                for port, m in memory:
                    key = f"{m.role} on :{port}"
                    peaks[key] = max(peaks.get(key, 0), m.peak)
                print(f"  {name} {i + 1}: {speed / MB:.0f} MB/s", flush=True)
            speed = store_alone(s3, bucket, source)
            results["store alone"].append(speed)
            print(f"  store alone {i + 1}: {speed / MB:.0f} MB/s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp-dir", type=Path, default=PROJECT_DIR / "bench" / "results" / "tmp")
    args = parser.parse_args()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scaleout-bench-", dir=args.tmp_dir))
    try:
        results = measure(work, int(args.size_gib * GiB), args.repeat)
    except (BenchError, OSError) as exc:
        print(f"the benchmark could not run: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    for name in ("embedded", "scale-out", "store alone"):
        speeds = results[name]
        print(f"{name:<11} {statistics.median(speeds) / MB:6.0f} MB/s (median of {len(speeds)})")
        for role, peak in sorted(results["peaks"].get(name, {}).items()):
            print(f"    peak RSS {role:<28} {peak / MB:5.0f} MB")
    out = PROJECT_DIR / "bench" / "results" / f"scaleout-bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    print(f"\nwritten to {out.relative_to(PROJECT_DIR)}")


if __name__ == "__main__":
    main()
