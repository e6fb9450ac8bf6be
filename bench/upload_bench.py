"""Chute's upload benchmark: how much of the machine's HTTP ceiling Chute keeps.

One run measures, over loopback, with the same multipart requests everywhere:

- the ceiling: a do-nothing ASGI app (`null_app.py`) under uvicorn with the settings
  `chute serve` uses (httptools, uvloop), 1 process with 1 chunk in flight, and 2
  processes with 3 chunks in flight;
- the disk, for reference: 1 GiB written in 100 MiB pieces the way Chute's local store
  writes them (writeback started as it goes, fdatasync at the end of each piece);
- `chute serve` taking 1 GiB in 100 MiB chunks, sha256 sent, durable acks (the server
  always fdatasyncs): 1 process with 1 chunk in flight, and `--workers 2` with 3 chunks
  in flight, as MB/s and as a share of the single-process ceiling;
- every server process's peak RSS (VmHWM), the server restarted for each scenario, and
  whether the peak during uploads grows with the chunk size (25 vs 100 MiB) or the file
  size (1 vs 4 GiB);
- the time from the last byte of the completing chunk's request to its answer, for
  1 GiB and 4 GiB, and the median of that time over every chunk.

The client (`rawhttp.py`) sends a chunk's bytes from the file with sendfile, so on a
2-core machine it costs little. Every Chute upload is checked: its job must succeed
with the file's size and SHA-256 as its result.

    .venv/bin/python bench/upload_bench.py [--quick] [--repeat N]

The table is printed and written as JSON under bench/results/. The exit status is 1
when a goal is missed and 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from rawhttp import MESSAGE_COMPLETE, MESSAGE_STORED, Source, UploadRun, call, send_file
from servers import ProcessMemory, Server, free_port, running
from usage import Usage, UsageMeter, disk_of

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # figures are in MB (10^6 bytes), as the goals are written

USER = "bench"
PASSWORD = "bench-password"

# The goals of the issue this benchmark answers.
GOAL_ONE_IN_FLIGHT = 0.60  # of the 1-process, 1-in-flight ceiling
GOAL_TWO_WORKERS = 0.85  # of the same single-process ceiling
GOAL_PEAK_RSS = 150 * MB  # each server process
GOAL_COMPLETING_ANSWER = 0.5  # seconds
# "Does not grow": how much noise may add before a figure counts as grown.
RSS_GROWTH_SLACK = 10 * MB  # one buffered 25 MiB chunk would add more than this
LATENCY_GROWTH_SLACK = 0.1  # seconds, or LATENCY_GROWTH_FACTOR, whichever is larger
LATENCY_GROWTH_FACTOR = 1.5


class BenchError(Exception):
    """The benchmark could not measure what it should (a sanity check failed)."""


# --- the CSV file -------------------------------------------------------------------

ROW_BYTES = 64  # every line, header included, so every multiple of 64 bytes ends a line
HEADER = b"row_id,sensor_name,reading_value,recorded_at_utc,free_text_note\n"
NOTES = ("ok", "recalibrated", "late", "battery low", "manual", "spike", "")


def _row(i: int) -> bytes:
    line = (
        f"{i:08d},sensor-{i % 97:02d},{(i * 7919) % 1_000_000 / 100:9.2f},"
        f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z,"
        f"{NOTES[i % len(NOTES)]}"
    )
    return line.ljust(ROW_BYTES - 1).encode() + b"\n"


def write_csv(path: Path, size: int) -> None:
    """A CSV file of exactly `size` bytes (a multiple of 64): a header, then a 1 MiB block
    of rows repeated. Made durable, so its writeback does not disturb the measurements."""
    assert len(HEADER) == ROW_BYTES and size % ROW_BYTES == 0
    block = b"".join(_row(i) for i in range(MiB // ROW_BYTES))
    first = HEADER + block[ROW_BYTES:]
    with path.open("wb") as f:
        written = 0
        while written < size:
            data = (first if written == 0 else block)[: size - written]
            f.write(data)
            written += len(data)
        f.flush()
        os.fsync(f.fileno())


def hash_source(path: Path, size: int, chunk_size: int) -> Source:
    """The first `size` bytes of `path` in chunks: every chunk's SHA-256 and the whole's,
    in one pass, before anything is timed."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    buffer = memoryview(bytearray(MiB))
    with path.open("rb", buffering=0) as f:
        for offset in range(0, size, chunk_size):
            digest = hashlib.sha256()
            left = min(chunk_size, size - offset)
            while left:
                n = f.readinto(buffer[: min(left, MiB)])
                if not n:
                    raise BenchError(f"{path} is shorter than {size} bytes")
                digest.update(buffer[:n])
                whole.update(buffer[:n])
                left -= n
            chunks.append(digest.hexdigest())
    return Source(path, size, chunk_size, tuple(chunks), whole.hexdigest())


def warm(source: Source) -> None:
    """Read the file once more before it is sent, untimed: the kernel here may page out
    cold page cache (DAMON), and the client must send from memory, not from the disk."""
    buffer = memoryview(bytearray(MiB))
    with source.path.open("rb", buffering=0) as f:
        left = source.size
        while left and (n := f.readinto(buffer[: min(left, MiB)])):
            left -= n


# --- the disk reference ---------------------------------------------------------------

WRITEBACK_EVERY = 8 * MiB
SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], None]:
    """sync_file_range(fd, offset, length, WRITE) through libc, or nothing off Linux."""
    try:
        libc_call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    libc_call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start(fd: int, offset: int, length: int) -> None:
        libc_call(fd, offset, length, SYNC_FILE_RANGE_WRITE)

    return start


def disk_reference(source: Source, target: Path) -> float:
    """Bytes per second of writing `source` in its chunks as a local store would: pwrite
    in 1 MiB pieces, writeback started every 8 MiB, fdatasync at each chunk's end."""
    start_writeback = _writeback_starter()
    buffer = memoryview(bytearray(MiB))
    with source.path.open("rb", buffering=0) as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            started = time.perf_counter()
            for index in range(source.total_chunks):
                offset, length = source.chunk(index)
                synced = offset
                while length:
                    n = src.readinto(buffer[: min(length, MiB)])
                    os.pwrite(fd, buffer[:n], offset)
                    offset += n
                    length -= n
                    if offset - synced >= WRITEBACK_EVERY:
                        start_writeback(fd, synced, offset - synced)
                        synced = offset
                os.fdatasync(fd)
            return source.size / (time.perf_counter() - started)
        finally:
            os.close(fd)
            target.unlink()


# --- scenarios ------------------------------------------------------------------------


@dataclass
class Scenario:
    """One server, started afresh, sent the same file `repeat` times."""

    name: str
    server: Literal["ceiling", "chute"]
    processes: int
    in_flight: int
    file_size: int
    chunk_size: int
    repeat: int
    uploads: list[UploadRun] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)  # one per upload
    # Peaks at start are from start-up. Chute only: before uploads, from start-up and
    # sign-in (argon2); after each upload (and its job), since the reset before uploads.
    memory_at_start: list[ProcessMemory] = field(default_factory=list)
    memory_before_uploads: list[ProcessMemory] = field(default_factory=list)
    memory_after_upload: list[list[ProcessMemory]] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return statistics.median(u.bytes_per_second for u in self.uploads) / MB

    @property
    def completing_after_last_byte(self) -> float:
        return statistics.median(u.completing().after_last_byte for u in self.uploads)

    @property
    def chunk_after_last_byte(self) -> float:
        return statistics.median(c.after_last_byte for u in self.uploads for c in u.chunks)


class Bench:
    """Owns the run's work directory, its CSV file and the servers it starts."""

    def __init__(self, work: Path, file_size: int) -> None:
        self.work = work
        self.meter = UsageMeter(disk_of(work))
        self.csv = work / "bench.csv"
        self.file_size = file_size
        self.sources: dict[tuple[int, int], Source] = {}

    def prepare(self, plans: Sequence[tuple[int, int]]) -> None:
        write_csv(self.csv, self.file_size)
        for size, chunk_size in plans:
            self.sources[size, chunk_size] = hash_source(self.csv, size, chunk_size)

    def disk_reference(self, repeat: int) -> list[tuple[float, Usage]]:
        """MB/s of the disk alone, and the machine's usage meanwhile, `repeat` times."""
        source = self.sources[GiB, 100 * MiB]
        runs = []
        for _ in range(repeat):
            os.sync()
            warm(source)
            self.meter.start([])
            speed = disk_reference(source, self.work / "disk-reference") / MB
            runs.append((speed, self.meter.stop()))
        return runs

    def ceiling(self, scenario: Scenario) -> Scenario:
        port = free_port()
        directory = Path(tempfile.mkdtemp(prefix="ceiling-", dir=self.work))
        argv = [PYTHON, str(BENCH_DIR / "null_app.py"), "--port", str(port)]
        argv += ["--workers", str(scenario.processes)]
        server = Server(argv, bench_env({}), port, scenario.processes, directory / "server.log")
        source = self.sources[scenario.file_size, scenario.chunk_size]
        os.sync()
        try:
            with running(server, PROJECT_DIR):
                scenario.memory_at_start = server.memory()
                for _ in range(scenario.repeat):
                    warm(source)
                    self.meter.start(server.pids())
                    run = send_file(port, "/upload", "-", source, scenario.in_flight)
                    scenario.usage.append(self.meter.stop())
                    for chunk in run.chunks:
                        if chunk.answer.get("received", -1) < source.chunk(chunk.index)[1]:
                            raise BenchError(f"the null app did not get chunk {chunk.index}")
                    scenario.uploads.append(run)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return scenario

    def chute(self, scenario: Scenario) -> Scenario:
        port = free_port()
        directory = Path(tempfile.mkdtemp(prefix="chute-", dir=self.work))
        env = chute_env(directory / "data", port, CHUTE_CHUNK_SIZE=str(scenario.chunk_size))
        # No job worker: this measures the upload; bench/job_bench.py measures the job.
        argv = [PYTHON, "-m", "chute", "serve", "--no-worker"]
        if scenario.processes > 1:
            argv += ["--workers", str(scenario.processes)]
        server = Server(argv, env, port, scenario.processes, directory / "server.log")
        source = self.sources[scenario.file_size, scenario.chunk_size]
        os.sync()
        try:
            with running(server, PROJECT_DIR):
                scenario.memory_at_start = server.memory()
                token = _sign_in(port)
                scenario.memory_before_uploads = server.memory()
                server.reset_peaks()
                for _ in range(scenario.repeat):
                    job_id = _create_job(port, token)
                    warm(source)
                    target = f"/api/job/{job_id}/upload-data"
                    self.meter.start(server.pids())
                    run = send_file(port, target, token, source, scenario.in_flight)
                    scenario.usage.append(self.meter.stop())
                    run.job_id = job_id
                    _check_answers(run, job_id)
                    _check_stored(port, token, job_id, source)
                    scenario.uploads.append(run)
                    scenario.memory_after_upload.append(server.memory())
                    # Each upload starts from the same state: gigabytes of earlier uploads
                    # in the page cache can make new writes cost far more kernel time
                    # (bench/README.md), which would penalise later repeats only.
                    _delete_job(port, token, job_id)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return scenario


def bench_env(extra: dict[str, str]) -> dict[str, str]:
    # Inherited CHUTE_* settings are dropped: the benchmarks measure the embedded default.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


def chute_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a `chute serve` on `data_dir`, whose database has the bench user."""
    env = bench_env(
        {
            "CHUTE_DATA_DIR": str(data_dir),
            "CHUTE_PORT": str(port),
            "CHUTE_MIN_FREE_BYTES": "0",
            **settings,
        }
    )
    added = subprocess.run(
        [PYTHON, "-m", "chute", "user", "add", USER],
        input=f"{PASSWORD}\n".encode(),
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
    )
    if added.returncode != 0:
        raise BenchError(f"chute user add failed:\n{added.stderr.decode(errors='replace')}")
    return env


def _sign_in(port: int) -> str:
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    response = call(
        port, "POST", "/api/auth/token", {"Content-Type": "application/x-www-form-urlencoded"}, form
    )
    if response.status != 200:
        raise BenchError(f"sign-in failed: {response.status} {response.body!r}")
    return str(response.json()["access_token"])


def _create_job(port: int, token: str) -> int:
    response = call(
        port,
        "POST",
        "/api/job",
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        json.dumps({"name": "bench"}).encode(),
    )
    if response.status != 201:
        raise BenchError(f"creating a job failed: {response.status} {response.body!r}")
    return int(response.json()["id"])


def _delete_job(port: int, token: str, job_id: int) -> None:
    response = call(port, "DELETE", f"/api/job/{job_id}", {"Authorization": f"Bearer {token}"})
    if response.status != 204:
        raise BenchError(f"deleting job {job_id} failed: {response.status} {response.body!r}")


def _check_answers(run: UploadRun, job_id: int) -> None:
    run.completing()  # exactly one
    for chunk in run.chunks:
        message, answered_for = chunk.answer.get("message"), chunk.answer.get("job_id")
        if message not in (MESSAGE_STORED, MESSAGE_COMPLETE) or answered_for != job_id:
            raise BenchError(f"chunk {chunk.index}: unexpected answer {chunk.answer}")


def _check_stored(port: int, token: str, job_id: int, source: Source) -> None:
    """Check that the server holds exactly the file that was sent, chunk by chunk, and
    that the job was queued. (The job itself is the job benchmark's business.)"""
    headers = {"Authorization": f"Bearer {token}"}
    response = call(port, "GET", f"/api/job/{job_id}/upload-data", headers)
    if response.status != 200:
        raise BenchError(f"reading upload {job_id} failed: {response.status} {response.body!r}")
    held = response.json()
    got = (held["state"], held["bytes_received"], [c["sha256"] for c in held["chunks"]])
    if got != ("complete", source.size, list(source.chunk_sha256)):
        raise BenchError(f"upload {job_id} holds another file: {held}")
    job = call(port, "GET", f"/api/job/{job_id}", headers).json()
    if job["status"] != "queued":
        raise BenchError(f"job {job_id} is {job['status']}, not queued")


# --- the report -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    measurement: str
    value: str = ""
    goal: str = ""
    result: Literal["PASS", "FAIL", ""] = ""
    note: str = ""


def _verdict(ok: bool) -> Literal["PASS", "FAIL"]:
    return "PASS" if ok else "FAIL"


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


@dataclass(frozen=True)
class ProcessPeaks:
    role: str
    at_start: int  # VmRSS once the server was ready
    before_uploads: int  # VmHWM over start-up and sign-in
    uploads: int  # VmHWM over the uploads (and their jobs) alone

    @property
    def lifetime(self) -> int:
        return max(self.before_uploads, self.uploads)


def peaks_of(scenario: Scenario, after_upload: int = -1) -> list[ProcessPeaks]:
    """Each process's peaks, the uploads' peak read after upload number `after_upload`."""
    start = {m.pid: m for m in scenario.memory_at_start}
    after = {m.pid: m for m in scenario.memory_after_upload[after_upload]}
    return [
        ProcessPeaks(m.role, start[m.pid].rss if m.pid in start else 0, m.peak, after[m.pid].peak)
        for m in scenario.memory_before_uploads
        if m.pid in after
    ]


def _usage_note(usage: Sequence[Usage], size: int) -> str:
    """The medians of where the time went, e.g. to tell CPU-bound from disk-bound."""

    def median(values: Iterable[float]) -> float:
        return statistics.median(values)

    per_gib = GiB / size
    note = (
        f"cores {median(u.cores_busy for u in usage):.0%}"
        f" (iowait {median(u.iowait for u in usage):.0%}),"
        f" disk {median(u.disk_busy for u in usage):.0%}"
    )
    server = median(u.server_cpu for u in usage) * per_gib
    client = median(u.client_cpu for u in usage) * per_gib
    if server:
        note += f"; CPU s/GiB server {server:.2f}, client {client:.2f}"
    return note


def _spread_note(scenario: Scenario) -> str:
    """With several API workers: in how many uploads each of them took part, and the
    speed either way. The connections of one upload may all land on one worker."""
    workers = [m.pid for m in scenario.memory_at_start if m.role.startswith("API worker")]
    if len(workers) < 2:
        return ""
    spread: list[float] = []
    single: list[float] = []
    for upload, usage in zip(scenario.uploads, scenario.usage, strict=True):
        cpu = [usage.process_cpu.get(pid, 0.0) for pid in workers]
        # A worker took part when it did at least a fifth of the API workers' work.
        used = min(cpu) >= 0.2 * sum(cpu)
        (spread if used else single).append(upload.bytes_per_second / MB)
    note = f"; all API workers used in {len(spread)} of {len(scenario.uploads)} uploads"
    if spread and single:
        note += f" ({statistics.median(spread):.0f} MB/s; else {statistics.median(single):.0f})"
    return note


def report(disk: list[tuple[float, Usage]], scenarios: dict[str, Scenario]) -> list[Row]:
    ceiling1, ceiling2 = scenarios["ceiling-1"], scenarios["ceiling-2"]
    one, two, small = scenarios["chute-1"], scenarios["chute-2"], scenarios["chute-25"]
    big = scenarios.get("chute-4g")
    chute_runs = [s for s in (one, two, small, big) if s is not None]
    rows = [
        Row(f"throughput: 1 GiB in 100 MiB chunks over loopback (median of {one.repeat})"),
        Row(
            "  disk alone: write + fdatasync per 100 MiB, as Chute does",
            f"{statistics.median(speed for speed, _ in disk):.0f} MB/s",
            note=_usage_note([usage for _, usage in disk], GiB),
        ),
    ]

    def speed(scenario: Scenario, note: str = "") -> Row:
        usage = _usage_note(scenario.usage, scenario.file_size) + _spread_note(scenario)
        return Row(f"  {scenario.name}", f"{scenario.mb_per_s:.0f} MB/s", note=note + usage)

    rows += [speed(ceiling1), speed(ceiling2)]
    share1 = one.mb_per_s / ceiling1.mb_per_s
    share2 = two.mb_per_s / ceiling1.mb_per_s
    rows += [
        speed(one),
        Row(
            "    share of the 1-process ceiling",
            f"{share1:.1%}",
            f">= {GOAL_ONE_IN_FLIGHT:.0%}",
            _verdict(share1 >= GOAL_ONE_IN_FLIGHT),
        ),
        speed(two),
        Row(
            "    share of the 1-process ceiling",
            f"{share2:.1%}",
            f">= {GOAL_TWO_WORKERS:.0%}",
            _verdict(share2 >= GOAL_TWO_WORKERS),
        ),
        Row(
            "    share of the 2-process ceiling",
            f"{two.mb_per_s / ceiling2.mb_per_s:.1%}",
            note="reference",
        ),
    ]
    for scenario in chute_runs[2:]:
        rows.append(Row(f"  {scenario.name}", f"{scenario.mb_per_s:.0f} MB/s", note="one upload"))

    rows.append(Row("peak RSS (VmHWM) of each server process, server restarted per scenario"))
    for scenario in chute_runs:
        peaks = peaks_of(scenario)
        for p in peaks:
            rows.append(
                Row(
                    f"  {scenario.name}: {p.role}",
                    _mb(p.lifetime),
                    f"< {GOAL_PEAK_RSS / MB:.0f} MB",
                    _verdict(p.lifetime < GOAL_PEAK_RSS),
                    f"idle {p.at_start / MB:.0f}, start+sign-in {p.before_uploads / MB:.0f},"
                    f" uploads {p.uploads / MB:.0f}",
                )
            )
        rows.append(
            Row(
                f"  {scenario.name}: sum",
                _mb(sum(p.lifetime for p in peaks)),
                note=f"uploads {sum(p.uploads for p in peaks) / MB:.0f}",
            )
        )
    # Peaks during uploads only (start-up and sign-in cost the same everywhere), each
    # taken after one upload so both sides have sent one file.
    rows += _growth_rows("chunk size, 100 vs 25 MiB", peaks_of(one, 0), peaks_of(small, 0))
    if big is None:
        rows.append(Row("  growth with file size, 4 vs 1 GiB", "skipped", note="--quick"))
    else:
        rows += _growth_rows("file size, 4 vs 1 GiB", peaks_of(big, 0), peaks_of(one, 0))

    rows.append(Row("completing chunk's answer, from its last byte sent"))
    first = one.completing_after_last_byte
    rows.append(
        Row(
            f"  1 GiB in 100 MiB chunks (median of {len(one.uploads)})",
            f"{first:.3f} s",
            f"< {GOAL_COMPLETING_ANSWER} s",
            _verdict(first < GOAL_COMPLETING_ANSWER),
        )
    )
    if big is None:
        rows.append(Row("  4 GiB in 100 MiB chunks", "skipped", note="--quick"))
    else:
        last = big.completing_after_last_byte
        allowed = max(first + LATENCY_GROWTH_SLACK, first * LATENCY_GROWTH_FACTOR)
        rows += [
            Row(
                "  4 GiB in 100 MiB chunks",
                f"{last:.3f} s",
                f"< {GOAL_COMPLETING_ANSWER} s",
                _verdict(last < GOAL_COMPLETING_ANSWER),
            ),
            Row(
                "  growth, 4 vs 1 GiB",
                f"{last - first:+.3f} s",
                f"< +{LATENCY_GROWTH_SLACK} s or x{LATENCY_GROWTH_FACTOR}",
                _verdict(last <= allowed),
            ),
        ]
    rows.append(Row("every chunk's answer, from its last byte sent (median over chunks)"))
    for scenario in chute_runs:
        rows.append(Row(f"  {scenario.name}", f"{scenario.chunk_after_last_byte:.3f} s"))
    return rows


def _growth_rows(what: str, larger: list[ProcessPeaks], smaller: list[ProcessPeaks]) -> list[Row]:
    before = {p.role: p.uploads for p in smaller}
    pairs = [(p.role, p.uploads, before[p.role]) for p in larger if p.role in before]
    pairs.append(("sum", sum(p.uploads for p in larger), sum(before.values())))
    return [
        Row(
            f"  growth with {what}: {role}",
            f"{(after - was) / MB:+.1f} MB",
            f"< +{RSS_GROWTH_SLACK / MB:.0f} MB",
            _verdict(after - was < RSS_GROWTH_SLACK),
            f"uploads {was / MB:.0f} -> {after / MB:.0f}",
        )
        for role, after, was in pairs
    ]


def format_table(rows: list[Row]) -> str:
    titles = Row("measurement", "value", "goal", "", "note")
    width = {
        name: max(len(getattr(row, name)) for row in [*rows, titles])
        for name in ("measurement", "value", "goal")
    }

    def line(row: Row, result: str) -> str:
        return (
            f"{row.measurement:<{width['measurement']}}  {row.value:>{width['value']}}  "
            f"{row.goal:<{width['goal']}}  {result:<6}  {row.note}"
        ).rstrip()

    lines = [line(titles, "result")]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(line(row, row.result) if row.value else row.measurement)
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.partition(":")[2].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def chute_commit() -> str:
    """The commit measured, marked when chute/ has changes not committed yet."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "chute"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"{head}+changes" if changes else head


def _scenario_json(scenario: Scenario) -> dict[str, Any]:
    data = {
        k: v
        for k, v in asdict(scenario).items()
        if k not in ("uploads", "usage", "memory_after_upload")
    }
    data["mb_per_s"] = scenario.mb_per_s
    data["uploads"] = [
        {
            "job_id": upload.job_id,
            "seconds": upload.seconds,
            "mb_per_s": upload.bytes_per_second / MB,
            "chunks": [
                {
                    "index": c.index,
                    "status": c.status,
                    "message": c.answer.get("message"),
                    "seconds": c.answered - c.started,
                    "after_last_byte": c.after_last_byte,
                }
                for c in upload.chunks
            ],
        }
        for upload in scenario.uploads
    ]
    for upload, usage in zip(data["uploads"], scenario.usage, strict=True):
        upload["usage"] = asdict(usage)
    for upload, memory in zip(data["uploads"], scenario.memory_after_upload, strict=False):
        upload["memory_after"] = [asdict(m) for m in memory]
    return data


# --- the run --------------------------------------------------------------------------


def _check_disk(where: Path, needed: int) -> None:
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise BenchError(
            f"{where} has {free / GiB:.1f} GiB free; this run needs about {needed / GiB:.1f} GiB"
            " (--quick skips the 4 GiB upload)"
        )


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(quick: bool, repeat: int, tmp_root: Path) -> int:
    file_size = GiB if quick else 4 * GiB
    scenarios = [
        ("ceiling-1", Scenario("ceiling: null app, 1 process, 1 in flight",
                               "ceiling", 1, 1, GiB, 100 * MiB, repeat)),
        ("ceiling-2", Scenario("ceiling: null app, 2 processes, 3 in flight",
                               "ceiling", 2, 3, GiB, 100 * MiB, repeat)),
        ("chute-1", Scenario("chute serve, 1 in flight",
                             "chute", 1, 1, GiB, 100 * MiB, repeat)),
        ("chute-2", Scenario("chute serve --workers 2, 3 in flight",
                             "chute", 2, 3, GiB, 100 * MiB, repeat)),
        ("chute-25", Scenario("chute serve, 1 GiB in 25 MiB chunks",
                              "chute", 1, 1, GiB, 25 * MiB, 1)),
        ("chute-4g", Scenario("chute serve, 4 GiB in 100 MiB chunks",
                              "chute", 1, 1, 4 * GiB, 100 * MiB, 1)),
    ]  # fmt: skip
    scenarios = [(key, s) for key, s in scenarios if s.file_size <= file_size]
    tmp_root.mkdir(parents=True, exist_ok=True)
    # The CSV file, one upload stored (each is deleted once checked), room to breathe.
    _check_disk(tmp_root, 2 * file_size + 2 * GiB)

    started = datetime.now()
    done: dict[str, Scenario] = {}
    work = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=tmp_root))
    try:
        bench = Bench(work, file_size)
        _say(f"writing and hashing a {file_size // GiB} GiB CSV file in {work}")
        bench.prepare(sorted({(s.file_size, s.chunk_size) for _, s in scenarios}))
        _say("disk reference")
        disk = bench.disk_reference(repeat)
        for key, scenario in scenarios:
            _say(scenario.name)
            measure = bench.ceiling if scenario.server == "ceiling" else bench.chute
            done[key] = measure(scenario)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = report(disk, done)
    info = machine()
    commit = chute_commit()
    print(
        f"\nChute {commit} upload benchmark, {started:%Y-%m-%d %H:%M}, {info['cores']} cores"
        f" ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}"
    )
    print("MB = 10^6 bytes. Every chunk carries its sha256; Chute fdatasyncs every chunk.")
    print(format_table(rows))
    failed = sum(row.result == "FAIL" for row in rows)
    print(f"\n{failed} goal(s) missed." if failed else "\nEvery goal met.")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"upload-bench-{started:%Y%m%d-%H%M%S}.json"
    summary = {
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "quick": quick,
        "repeat": repeat,
        "chute_commit": commit,
        "disk_reference": [{"mb_per_s": mb_s, "usage": asdict(u)} for mb_s, u in disk],
        "scenarios": {key: _scenario_json(s) for key, s in done.items()},
        "table": [asdict(row) for row in rows],
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"Written to {out.relative_to(PROJECT_DIR)}")
    return 1 if failed else 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds, so servers are stopped and files removed


def main() -> None:
    parser = argparse.ArgumentParser(description="Chute's upload benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="skip the 4 GiB upload")
    parser.add_argument(
        "--repeat", type=int, default=5, help="uploads per throughput scenario (default 5)"
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=RESULTS_DIR / "tmp",
        help="where the CSV file and data dirs go during the run (default bench/results/tmp)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sys.exit(run(args.quick, args.repeat, args.tmp_dir))
    except Exception as exc:  # a sanity check, a server that failed, a connection lost
        print(
            f"upload_bench: the benchmark could not run: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
