"""Job benchmark: the `profile` job against DuckDB's own CSV-to-Parquet copy.

On one generated CSV file (2 GiB by default), in the same run, alternating:
- **DuckDB alone**: a fresh Python process runs
  `COPY (SELECT * FROM read_csv(file)) TO 'x.parquet'` with DuckDB's defaults;
- **Chute**: the file is uploaded to `chute serve` (100 MiB chunks, 3 in flight), and
  the profile job runs on it: from `started_at` to `finished_at`, as the job records
  them (assembling the upload, sniffing, the pass to Parquet, the profile, storing).

Both read their file from disk: the upload drops the pages it writes from the page
cache, and the benchmark drops DuckDB's file from it before each run. Also measured:
the job worker's peak RSS during the job, and how long after the completing chunk's
answer the job is `running` (on the big file and on small ones).

    .venv/bin/python bench/job_bench.py [--size-gib 2] [--repeat 3] [--tmp-dir DIR]

Exit status: 0 when every goal is met, 1 when one is missed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from rawhttp import Source, call, send_file
from servers import Server, free_port, running
from upload_bench import (
    MB,
    PROJECT_DIR,
    PYTHON,
    BenchError,
    GiB,
    MiB,
    _create_job,
    _sign_in,
    chute_env,
    hash_source,
    machine,
    warm,
)

GOAL_SPEED = 0.85  # of DuckDB's own copy: within 15 %
GOAL_TO_RUNNING = 1.0  # seconds, median
SMALL_RUNS = 9  # small uploads for the answer-to-running latency

BASELINE = """
import duckdb, resource, sys, time
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
started = time.perf_counter()
con.execute(
    "COPY (SELECT * FROM read_csv(?)) TO '" + sys.argv[2] + "' (FORMAT parquet)", [sys.argv[1]]
)
print(time.perf_counter() - started)
"""


def write_csv(path: Path, size: int) -> None:
    """Mixed columns, some quoted with commas and quotes inside, up to about `size` bytes."""
    select = """
        SELECT i AS id, 'sensor ' || (i % 997) AS name, round(i * 0.37, 2) AS amount,
               DATE '2020-01-01' + (i % 2000)::INTEGER AS day, i % 3 = 0 AS flag,
               CASE WHEN i % 10 = 0 THEN 'said "hi", then left' ELSE 'note ' || i END AS note
        FROM range({rows}) t(i)
    """
    with duckdb.connect() as con:
        sample = path.with_suffix(".sample")
        con.execute(f"COPY ({select.format(rows=100_000)}) TO '{sample}' (HEADER)")
        per_row = sample.stat().st_size / 100_000
        sample.unlink()
        rows = int(size / per_row)
        con.execute(f"COPY ({select.format(rows=rows)}) TO '{path}' (HEADER)")


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache, so the next reader reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def duckdb_alone(csv: Path, work: Path) -> tuple[float, int]:
    """Seconds of DuckDB's own copy, and its process's peak RSS."""
    target = work / "baseline.parquet"
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    done = subprocess.run(
        [PYTHON, "-c", BASELINE, str(csv), str(target)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"DuckDB's copy failed: {done.stderr}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu
    print(f"  DuckDB alone: {cpu:.1f} CPU s", flush=True)
    target.unlink()
    # ru_maxrss of children is the largest child so far: only a new maximum shows.
    return float(done.stdout.split()[-1]), max(peak, before) * 1024


@dataclass
class JobRun:
    seconds: float  # started_at to finished_at
    to_running: float  # completing answer to started_at
    worker_peak: int
    rows: int


@dataclass
class Results:
    size: int
    duckdb_seconds: list[float] = field(default_factory=list)
    duckdb_peak: int = 0
    jobs: list[JobRun] = field(default_factory=list)
    small_to_running: list[float] = field(default_factory=list)


def _wall(perf: float) -> float:
    return time.time() - (time.perf_counter() - perf)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_job(port: int, token: str, job_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = call(port, "GET", f"/api/job/{job_id}", _headers(token)).json()
        if job["status"] == "succeeded":
            return job
        if job["status"] not in ("queued", "running"):
            raise BenchError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        # As often as the events stream looks; polling faster takes CPU from the job.
        time.sleep(0.5)
    raise BenchError(f"job {job_id} did not finish in {timeout:.0f} s")


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _job_process_peak(server: Server, job_id: int) -> int:
    """The peak RSS the job's own process logged (the kind runs in a child of the worker)."""
    peaks = [
        float(line.rsplit("peak RSS ", 1)[1].split()[0]) * MB
        for line in server.log_path.read_text(errors="replace").splitlines()
        if "job process" in line and "peak RSS" in line
    ]
    if not peaks:
        raise BenchError(f"job {job_id}: no peak RSS of its process in the worker's log")
    return int(peaks[-1])


def run_job(server: Server, port: int, token: str, source: Source) -> JobRun:
    job_id = _create_job(port, token)
    warm(source)
    server.reset_peaks()
    upload = send_file(port, f"/api/job/{job_id}/upload-data", token, source, 3)
    answered = _wall(upload.completing().answered)
    job = _wait_job(port, token, job_id, timeout=600)
    worker = [m.peak for m in server.memory() if m.role == "job worker"]
    worker.append(_job_process_peak(server, job_id))
    started, finished = _timestamp(job["started_at"]), _timestamp(job["finished_at"])
    response = call(port, "DELETE", f"/api/job/{job_id}", _headers(token))
    if response.status != 204:
        raise BenchError(f"deleting job {job_id}: {response.status}")
    return JobRun(finished - started, started - answered, max(worker), job["result"]["rows"])


def measure(work: Path, size: int, repeat: int) -> Results:
    csv = work / "job.csv"
    print(f"writing a {size / GiB:.1f} GiB CSV file ...", flush=True)
    write_csv(csv, size)
    source = hash_source(csv, csv.stat().st_size, 100 * MiB)
    small_csv = work / "small.csv"
    small_csv.write_bytes(csv.open("rb").read(1 * MiB).rsplit(b"\n", 1)[0] + b"\n")
    small = hash_source(small_csv, small_csv.stat().st_size, 100 * MiB)
    results = Results(size=source.size)

    port = free_port()
    env = chute_env(work / "data", port)
    server = Server([PYTHON, "-m", "chute", "serve"], env, port, 1, work / "server.log")
    with running(server, PROJECT_DIR):
        token = _sign_in(port)
        for i in range(repeat):
            # Chute's job reads its stored copy from disk: the upload drops the pages it
            # wrote from the cache. DuckDB alone reads its file from disk too.
            evict(csv)
            seconds, peak = duckdb_alone(csv, work)
            results.duckdb_seconds.append(seconds)
            results.duckdb_peak = max(results.duckdb_peak, peak)
            print(f"  DuckDB alone {i + 1}: {source.size / seconds / MB:.0f} MB/s", flush=True)
            job = run_job(server, port, token, source)
            results.jobs.append(job)
            print(
                f"  Chute's job {i + 1}: {source.size / job.seconds / MB:.0f} MB/s, "
                f"running {job.to_running:.3f} s after the answer",
                flush=True,
            )
        for _ in range(SMALL_RUNS):
            results.small_to_running.append(run_job(server, port, token, small).to_running)
    # Where the big jobs' time went, as the worker logged it.
    for line in (work / "server.log").read_text(errors="replace").splitlines():
        if f"profile of {source.size} bytes" in line or "job process" in line:
            print("  worker:", line.split(" ", 3)[-1])
    return results


def report(r: Results) -> tuple[list[tuple[str, str, str, str]], bool]:
    duck = r.size / statistics.median(r.duckdb_seconds) / MB
    chute = r.size / statistics.median(j.seconds for j in r.jobs) / MB
    to_running = statistics.median([j.to_running for j in r.jobs] + r.small_to_running)
    peak = max(j.worker_peak for j in r.jobs)
    speed_ok = chute >= GOAL_SPEED * duck
    latency_ok = to_running < GOAL_TO_RUNNING
    n = len(r.jobs)
    rows = [
        (f"DuckDB's own COPY to Parquet (median of {n})", f"{duck:.0f} MB/s", "", ""),
        (
            f"Chute's profile job (median of {n})",
            f"{chute:.0f} MB/s ({chute / duck:.0%})",
            f">= {GOAL_SPEED:.0%} of DuckDB",
            "PASS" if speed_ok else "FAIL",
        ),
        ("peak RSS, DuckDB alone", f"{r.duckdb_peak / MB:.0f} MB", "", ""),
        ("peak RSS, Chute's job (worker or its job process)", f"{peak / MB:.0f} MB", "", ""),
        (
            f"completing answer to running (median of {n + len(r.small_to_running)})",
            f"{to_running:.3f} s",
            f"< {GOAL_TO_RUNNING} s",
            "PASS" if latency_ok else "FAIL",
        ),
    ]
    return rows, speed_ok and latency_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp-dir", type=Path, default=PROJECT_DIR / "bench" / "results" / "tmp")
    args = parser.parse_args()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="job-bench-", dir=args.tmp_dir))
    try:
        results = measure(work, int(args.size_gib * GiB), args.repeat)
    except BenchError as exc:
        print(f"the benchmark could not run: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows, ok = report(results)
    width = max(len(row[0]) for row in rows)
    print()
    for name, value, goal, verdict in rows:
        print(f"{name:<{width}}  {value:>18}  {goal:<20} {verdict}")
    out = PROJECT_DIR / "bench" / "results" / f"job-bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps(
            {"machine": machine(), "rows": rows, "raw": vars(results)}, default=vars, indent=2
        )
    )
    print(f"\nwritten to {out.relative_to(PROJECT_DIR)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
