"""Chute's tus endpoint against two peer tus servers, with the same client and file.

One run, over loopback, on one generated CSV file, in alternating rounds:

- **Chute tus**: `chute serve --no-worker`, `POST /api/tus/` with a bearer token; every
  PATCH carries `Upload-Checksum: sha256 ...`; Chute hashes it server-side and makes
  every acknowledged part durable (fdatasync) before it answers;
- **@tus/server**: the tus project's Node server with `@tus/file-store` (npm), its
  defaults (no checksum extension, no fsync);
- **tuspyserver** (PyPI): its FastAPI router alone under uvicorn with `chute serve`'s
  settings, its default local storage (no checksum extension, no fsync);
- **Chute chunk endpoint**: `bench/upload_bench.py`'s Chute scenario (1 in flight,
  chunks of the same size), so its figure sits beside the tus ones.

Every tus upload is sent by tus-js-client (npm) in Node (`bench/tus/upload.mjs`), one
PATCH per `--chunk-size` bytes, read from the same file. Each round is checked: the
bytes the server stored have the file's SHA-256. Reported per server, as the median of
the rounds with their min-max: MB/s from the creation request's start to the last
answer, the server's peak RSS during the upload, the completing PATCH's time from its
last byte handed to the kernel to its answer, and the server's and the client's CPU per
GiB. While this checkout's Chute has no tus endpoint, its row is skipped.

    .venv/bin/python bench/tus_bench.py [--size 1GiB] [--rounds 5] [--chunk-size 100MiB]

The table is printed and written as JSON under bench/results/. The exit status is 1
when a goal is missed and 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from rawhttp import Source, call
from servers import HOST, ProcessMemory, Server, free_port
from upload_bench import (
    GOAL_COMPLETING_ANSWER,
    MB,
    PROJECT_DIR,
    PYTHON,
    RESULTS_DIR,
    Bench,
    BenchError,
    GiB,
    KiB,
    MiB,
    Row,
    Scenario,
    _check_disk,
    _delete_job,
    _on_sigterm,
    _say,
    _scenario_json,
    _sign_in,
    _verdict,
    bench_env,
    chute_commit,
    chute_env,
    format_table,
    machine,
    warm,
)
from usage import Usage

P = ParamSpec("P")
T = TypeVar("T")

TUS_DIR = Path(__file__).resolve().parent / "tus"
NODE = shutil.which("node") or "node"
TUS_VERSION = "1.0.0"
ALL_SERVERS = ("chute", "node", "tuspy")


# --- one upload through tus-js-client ---------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of the client, as `upload.mjs` saw it (seconds on the driver's clock)."""

    method: str
    url: str
    offset: int | None  # the PATCH's Upload-Offset
    bytes: int  # its body
    status: int
    answered_offset: int | None
    started: float
    sent: float | None  # its last byte handed to the kernel (None: never all sent)
    answered: float  # its answer read

    @property
    def after_last_byte(self) -> float:
        assert self.sent is not None
        return self.answered - self.sent


@dataclass(frozen=True)
class Sent:
    """What the client saw of one upload."""

    url: str
    job_id: int | None  # the job a Chute server named (Chute-Job-Id)
    client_cpu: float  # CPU seconds of the Node client during the upload
    requests: list[Request]

    @property
    def seconds(self) -> float:
        """From the creation request's start to the last answer."""
        return self.requests[-1].answered - self.requests[0].started

    def completing(self, size: int) -> Request:
        done = [r for r in self.requests if r.method == "PATCH" and r.answered_offset == size]
        if len(done) != 1:
            raise BenchError(f"expected one PATCH answered with offset {size}, got {len(done)}")
        return done[0]


@dataclass(frozen=True)
class TusRound:
    """One upload to one server."""

    sent: Sent
    usage: Usage
    memory: list[ProcessMemory]  # peaks since the reset just before the upload

    @property
    def peak_rss(self) -> int:
        return sum(m.peak for m in self.memory)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def tus_upload(
    work: Path,
    source: Source,
    endpoint: str,
    headers: dict[str, str],
    metadata: dict[str, str],
    checksums: dict[str, str] | None,
) -> Sent:
    """Send `source` with tus-js-client in a Node process of its own. Every request is
    checked against the protocol: 201, then 204s that each move the offset by their body."""
    spec = {
        "endpoint": endpoint,
        "file": str(source.path),
        "size": source.size,
        "chunkSize": source.chunk_size,
        "headers": headers,
        "metadata": metadata,
        "checksums": checksums,
    }
    spec_path = work / "upload-spec.json"
    spec_path.write_text(json.dumps(spec))
    # Generous: a stuck upload must still end the run, not hang it.
    timeout = 120 + source.size / (5 * MB)
    done = subprocess.run(
        [NODE, str(TUS_DIR / "upload.mjs"), str(spec_path)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise BenchError(
            f"the tus client failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
        ) from None
    requests = [
        Request(
            method=r["method"],
            url=r["url"],
            offset=_int_or_none(r["offset"]),
            bytes=int(r["bytes"]),
            status=int(r.get("status", 0)),
            answered_offset=_int_or_none(r.get("answeredOffset")),
            started=r["started"] / 1000,
            sent=None if r["sent"] is None else r["sent"] / 1000,
            answered=r.get("answered", float("nan")) / 1000,
        )
        for r in answer["requests"]
    ]
    if not answer["ok"]:
        tail = [(r.method, r.offset, r.status) for r in requests[-3:]]
        raise BenchError(f"the tus upload failed: {answer['error']} (last requests: {tail})")
    _check_requests(requests, source)
    return Sent(
        str(answer["url"]), _int_or_none(answer["jobId"]), float(answer["cpuSeconds"]), requests
    )


def _check_requests(requests: Sequence[Request], source: Source) -> None:
    first, patches = requests[0], requests[1:]
    if first.method != "POST" or first.status != 201:
        raise BenchError(f"the creation request answered {first.status}, not 201")
    expected = -(-source.size // source.chunk_size)
    if len(patches) != expected:
        raise BenchError(f"{len(patches)} PATCHes, expected {expected} of {source.chunk_size} B")
    offset = 0
    for r in patches:
        if r.method != "PATCH" or r.status != 204 or r.offset != offset:
            raise BenchError(f"unexpected request: {r.method} at {r.offset}, answered {r.status}")
        if r.answered_offset != offset + r.bytes or r.sent is None:
            raise BenchError(f"the PATCH at {offset} was answered with {r.answered_offset}")
        offset += r.bytes
    if offset != source.size:
        raise BenchError(f"the PATCHes carried {offset} bytes, not {source.size}")


def file_sha256(path: Path, offset: int = 0, length: int | None = None) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(MiB))
    with path.open("rb", buffering=0) as f:
        f.seek(offset)
        left = path.stat().st_size - offset if length is None else length
        while left and (n := f.readinto(buffer[: min(left, MiB)])):
            digest.update(buffer[:n])
            left -= n
    return digest.hexdigest()


# --- the servers --------------------------------------------------------------------


class Target(ABC):
    """A tus server under test: how to start it, where to send, how to check and clean."""

    key: str
    title: str
    note: str

    def __init__(self, work: Path) -> None:
        self.work = work / self.key
        self.work.mkdir()
        self.port = free_port()
        self.server = self.make_server()

    @abstractmethod
    def make_server(self) -> Server: ...

    def ready(self) -> None:
        """Called once the server answers, before the first round: a peer needs nothing."""
        return None

    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    def headers(self) -> dict[str, str]:
        return {}

    def checksums(self, source: Source) -> dict[str, str] | None:
        return None

    @abstractmethod
    def check_stored(self, url: str, job_id: int | None, source: Source) -> None:
        """Raise BenchError unless the server holds exactly the file sent."""

    @abstractmethod
    def discard(self, url: str, job_id: int | None) -> None:
        """Remove the upload, so that every round starts from the same state."""


class PeerTarget(Target):
    """A peer that stores an upload as one file, `<dir>/<id>`, beside its own sidecar."""

    @property
    def files(self) -> Path:
        return self.work / "files"  # the same disk as Chute's data dir

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/files/"

    def stored_path(self, url: str) -> Path:
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        if not re.fullmatch(r"[A-Za-z0-9_-]+", upload_id):
            raise BenchError(f"unexpected upload URL {url}")
        return self.files / upload_id

    def check_stored(self, url: str, job_id: int | None, source: Source) -> None:
        path = self.stored_path(url)
        size = path.stat().st_size
        if size != source.size or file_sha256(path) != source.sha256:
            raise BenchError(f"{self.title} stored another file ({size} bytes) at {path}")

    def discard(self, url: str, job_id: int | None) -> None:
        path = self.stored_path(url)
        for stored in self.files.glob(f"{path.name}*"):  # the file and its sidecar
            stored.unlink()


class NodeTarget(PeerTarget):
    key = "node"
    title = "@tus/server + @tus/file-store"
    note = "no checksum extension; no fsync"

    def make_server(self) -> Server:
        argv = [NODE, str(TUS_DIR / "node_server.mjs"), "--port", str(self.port)]
        argv += ["--dir", str(self.files)]
        # No uvicorn start-up line to wait for: ready once the port takes connections.
        return Server(argv, bench_env({}), self.port, 0, self.work / "server.log")


class TuspyTarget(PeerTarget):
    key = "tuspy"
    title = "tuspyserver"
    note = "no checksum extension; no fsync"

    def make_server(self) -> Server:
        argv = [PYTHON, str(TUS_DIR / "tuspy_server.py"), "--port", str(self.port)]
        argv += ["--dir", str(self.files)]
        return Server(argv, bench_env({}), self.port, 1, self.work / "server.log")


class ChuteTarget(Target):
    """Chute's tus endpoint (DESIGN §6): a bearer token, a new job named in the metadata,
    sha256 on every PATCH. The job stays queued (no worker) and is deleted after its check."""

    key = "chute"
    title = "Chute tus"
    note = "Upload-Checksum sha256 on every PATCH; fdatasync before each answer"

    def __init__(self, work: Path) -> None:
        self.token = ""
        super().__init__(work)

    def make_server(self) -> Server:
        env = chute_env(self.work / "data", self.port)
        # No job worker: this measures the upload; bench/job_bench.py measures the job.
        argv = [PYTHON, "-m", "chute", "serve", "--no-worker"]
        return Server(argv, env, self.port, 1, self.work / "server.log")

    def ready(self) -> None:
        self.token = _sign_in(self.port)

    def has_tus(self) -> str | None:
        """None when this checkout's Chute serves tus, else what it answered instead."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request("OPTIONS", "/api/tus/", headers={"Tus-Resumable": TUS_VERSION})
            answer = conn.getresponse()
            answer.read()
        finally:
            conn.close()
        if answer.status in (200, 204) and answer.getheader("Tus-Version"):
            return None
        return f"OPTIONS /api/tus/ answered {answer.status}"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/api/tus/"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def checksums(self, source: Source) -> dict[str, str]:
        # Each PATCH body is one of the source's chunks: their digests are known already.
        return {
            str(source.chunk(i)[0]): base64.b64encode(bytes.fromhex(digest)).decode()
            for i, digest in enumerate(source.chunk_sha256)
        }

    def check_stored(self, url: str, job_id: int | None, source: Source) -> None:
        if job_id is None:
            raise BenchError("Chute's creation answer named no job (Chute-Job-Id)")
        if "/api/tus/" not in url:
            raise BenchError(f"Chute's upload URL is {url}, not under /api/tus/")
        auth = self.headers()
        response = call(self.port, "GET", f"/api/job/{job_id}/upload-data", auth)
        if response.status != 200:
            raise BenchError(f"reading upload {job_id}: {response.status} {response.body!r}")
        held = response.json()
        if (held["state"], held["bytes_received"]) != ("complete", source.size):
            raise BenchError(f"upload {job_id} is not the complete file: {held}")
        _check_parts(held["chunks"], source)
        job = call(self.port, "GET", f"/api/job/{job_id}", auth).json()
        if job["status"] != "queued":
            raise BenchError(f"job {job_id} is {job['status']}, not queued")

    def discard(self, url: str, job_id: int | None) -> None:
        if job_id is not None:
            _delete_job(self.port, self.token, job_id)


def _check_parts(parts: list[dict[str, Any]], source: Source) -> None:
    """The parts Chute lists (size and SHA-256, in order) must cover the file exactly and
    hash as the file's bytes do. Parts that are the source's chunks are compared with the
    digests at hand; any other cut is hashed from the file."""
    offset = 0
    for i, part in enumerate(sorted(parts, key=lambda p: int(p["index"]))):
        size, digest = int(part["size"]), str(part["sha256"])
        if int(part.get("offset", offset)) != offset:
            raise BenchError(f"Chute's parts leave a gap or overlap at byte {offset}: {part}")
        if i < source.total_chunks and source.chunk(i) == (offset, size):
            known = source.chunk_sha256[i]
        else:
            known = file_sha256(source.path, offset, size)
        if digest != known:
            raise BenchError(f"Chute's part at byte {offset} holds other bytes: {part}")
        offset += size
    if offset != source.size:
        raise BenchError(f"Chute's parts hold {offset} bytes, not {source.size}")


TARGETS: dict[str, type[Target]] = {
    "chute": ChuteTarget,
    "node": NodeTarget,
    "tuspy": TuspyTarget,
}


def _with_log(target: Target, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work`'s result; a failure names the server and carries the tail of its log."""
    try:
        return work(*args, **kwargs)
    except Exception as exc:
        raise BenchError(
            f"{target.title}: {type(exc).__name__}: {exc}\n"
            f"--- its log (tail) ---\n{target.server.log_tail()}"
        ) from exc


def one_round(bench: Bench, target: Target, source: Source) -> TusRound:
    os.sync()  # the previous upload's writeback must not land in this one
    warm(source)
    target.server.reset_peaks()
    bench.meter.start(target.server.pids())
    sent = tus_upload(
        target.work,
        source,
        target.endpoint,
        target.headers(),
        {"name": "bench", "filename": source.path.name, "filetype": "text/csv"},
        target.checksums(source),
    )
    usage = bench.meter.stop()
    memory = target.server.memory()
    target.check_stored(sent.url, sent.job_id, source)
    target.discard(sent.url, sent.job_id)
    return TusRound(sent, usage, memory)


# --- the report -----------------------------------------------------------------------


@dataclass
class Figures:
    """One server's rounds, reduced to what the table shows."""

    title: str
    mb_per_s: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    completing: list[float] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)
    client_cpu_per_gib: list[float] = field(default_factory=list)
    note: str = ""


def _spread(values: Sequence[float], show: Callable[[float], str]) -> str:
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}-{show(max(values))})"


def report(figures: list[Figures], skipped: dict[str, str]) -> list[Row]:
    sections: list[tuple[str, Callable[[Figures], Sequence[float]], Callable[[float], str]]] = [
        ("MB/s, creation to the last answer", lambda f: f.mb_per_s, lambda v: f"{v:.0f}"),
        (
            "peak RSS during the upload, MB (the server's processes' VmHWM, added up)",
            lambda f: f.peak_rss,
            lambda v: f"{v / MB:.0f}",
        ),
        (
            "completing PATCH, s: its last byte handed to the kernel -> its answer read",
            lambda f: f.completing,
            lambda v: f"{v:.3f}",
        ),
        ("server CPU s per GiB", lambda f: f.cpu_per_gib, lambda v: f"{v:.2f}"),
        ("client CPU s per GiB", lambda f: f.client_cpu_per_gib, lambda v: f"{v:.2f}"),
    ]
    rows: list[Row] = []
    for n, (title, values, show) in enumerate(sections):
        rows.append(Row(f"{title} (median, min-max)"))
        for f in figures:
            rows.append(
                Row(f"  {f.title}", _spread(values(f), show), note=f.note if n == 0 else "")
            )
        for title_skipped, why in skipped.items():
            rows.append(Row(f"  {title_skipped}", "skipped", note=why if n == 0 else ""))
    chute = next((f for f in figures if f.title == ChuteTarget.title), None)
    peers = [f for f in figures if f.title in (NodeTarget.title, TuspyTarget.title)]
    if chute is not None:
        rows.append(Row("goals"))
        if peers:
            fastest = max(peers, key=lambda f: statistics.median(f.mb_per_s))
            best = statistics.median(fastest.mb_per_s)
            mine = statistics.median(chute.mb_per_s)
            rows.append(
                Row(
                    "  Chute tus vs the fastest peer",
                    f"{100 * mine / best:.0f} %",
                    ">= 100 %",
                    _verdict(mine >= best),
                    f"{mine:.0f} vs {best:.0f} MB/s ({fastest.title})",
                )
            )
        latency = statistics.median(chute.completing)
        rows.append(
            Row(
                "  Chute tus completing PATCH",
                f"{latency:.3f} s",
                f"< {GOAL_COMPLETING_ANSWER} s",
                _verdict(latency < GOAL_COMPLETING_ANSWER),
            )
        )
    return rows


def _round_json(r: TusRound, size: int) -> dict[str, Any]:
    return {
        "url": r.sent.url,
        "job_id": r.sent.job_id,
        "seconds": r.sent.seconds,
        "mb_per_s": size / r.sent.seconds / MB,
        "completing_after_last_byte": r.sent.completing(size).after_last_byte,
        "peak_rss": r.peak_rss,
        "memory": [asdict(m) for m in r.memory],
        "usage": asdict(r.usage),
        "client_cpu": r.sent.client_cpu,
        "requests": [
            {**asdict(q), "after_last_byte": None if q.sent is None else q.after_last_byte}
            for q in r.sent.requests
        ],
    }


# --- the run --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 64MiB or 1GiB")
    unit = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}[match[2] or "B"]
    return int(float(match[1]) * unit)


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages: the machine is shared, so say how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace) -> int:
    size, chunk_size, rounds = args.size, args.chunk_size, args.rounds
    if not (TUS_DIR.parent.parent / "node_modules" / "@tus" / "server").is_dir():
        raise BenchError("the npm packages are missing: run `npm ci` in the project (make test)")
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    # The CSV file and, one at a time, one upload stored by one server (each is removed
    # once checked), with room to breathe.
    _check_disk(args.tmp_dir, 2 * size + GiB)
    started = datetime.now()
    load_before = _loadavg()
    work = Path(tempfile.mkdtemp(prefix="tus-bench-", dir=args.tmp_dir))
    results: dict[str, list[TusRound]] = {}
    chunk_runs: list[Scenario] = []
    skipped: dict[str, str] = {}
    try:
        bench = Bench(work, size)
        _say(f"writing and hashing a {size / MiB:.0f} MiB CSV file in {work}")
        bench.prepare([(size, chunk_size)])
        source = bench.sources[size, chunk_size]
        with ExitStack() as stack:
            targets: list[Target] = []
            for key in args.servers:
                target = TARGETS[key](work)
                _say(f"starting {target.title}")
                stack.callback(target.server.stop)
                _with_log(target, target.server.start, PROJECT_DIR)
                if isinstance(target, ChuteTarget) and (why := target.has_tus()):
                    skipped[target.title] = f"this checkout's Chute has no tus endpoint ({why})"
                    _say(f"skipping {target.title}: {skipped[target.title]}")
                    target.server.stop()
                    continue
                target.ready()
                target.server.reset_peaks()
                targets.append(target)
                results[target.key] = []
            for i in range(rounds):
                for target in targets:
                    done = _with_log(target, one_round, bench, target, source)
                    results[target.key].append(done)
                    _say(
                        f"round {i + 1}/{rounds} {target.title}: "
                        f"{size / done.sent.seconds / MB:.0f} MB/s, "
                        f"completing PATCH {done.sent.completing(size).after_last_byte:.3f} s, "
                        f"peak RSS {done.peak_rss / MB:.0f} MB"
                    )
                if args.chunk_endpoint:
                    scenario = Scenario(
                        "chute serve, chunk endpoint", "chute", 1, 1, size, chunk_size, 1
                    )
                    chunk_runs.append(bench.chute(scenario))
                    _say(
                        f"round {i + 1}/{rounds} Chute chunk endpoint: "
                        f"{scenario.mb_per_s:.0f} MB/s, "
                        f"completing chunk {scenario.completing_after_last_byte:.3f} s"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = []
    for key, runs in results.items():
        title, note = TARGETS[key].title, TARGETS[key].note
        figures.append(
            Figures(
                title,
                [size / r.sent.seconds / MB for r in runs],
                [r.peak_rss for r in runs],
                [r.sent.completing(size).after_last_byte for r in runs],
                [r.usage.server_cpu / (size / GiB) for r in runs],
                [r.sent.client_cpu / (size / GiB) for r in runs],
                note,
            )
        )
    if chunk_runs:
        figures.append(
            Figures(
                "Chute chunk endpoint",
                [s.mb_per_s for s in chunk_runs],
                [sum(m.peak for m in s.memory_after_upload[0]) for s in chunk_runs],
                [s.completing_after_last_byte for s in chunk_runs],
                [s.usage[0].server_cpu / (size / GiB) for s in chunk_runs],
                [s.usage[0].client_cpu / (size / GiB) for s in chunk_runs],
                "upload_bench.py's client (rawhttp, sendfile), from the first chunk's byte;"
                " its own server per round",
            )
        )
    rows = report(figures, skipped)
    info = machine()
    commit = chute_commit()
    load_after = _loadavg()
    print(
        f"\nChute {commit} tus benchmark, {started:%Y-%m-%d %H:%M}, {info['cores']} cores"
        f" ({info['cpu']}), Linux {info['kernel']}; load average before {load_before},"
        f" after {load_after}"
    )
    print(
        f"{size / MiB:.0f} MiB CSV, {rounds} alternating round(s), one PATCH (or chunk) per"
        f" {chunk_size / MiB:.0f} MiB, tus-js-client 4 in Node. MB = 10^6 bytes."
    )
    print(format_table(rows))
    failed = sum(row.result == "FAIL" for row in rows)
    print(f"\n{failed} goal(s) missed." if failed else "")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"tus-bench-{started:%Y%m%d-%H%M%S}.json"
    summary = {
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "load_average": {"before": load_before, "after": load_after},
        "chute_commit": commit,
        "size": size,
        "chunk_size": chunk_size,
        "rounds": rounds,
        "skipped": skipped,
        "servers": {key: [_round_json(r, size) for r in runs] for key, runs in results.items()},
        "chunk_endpoint": [_scenario_json(s) for s in chunk_runs],
        "table": [asdict(row) for row in rows],
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"Written to {out.relative_to(PROJECT_DIR)}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Chute's tus endpoint against @tus/server and tuspyserver (bench/README.md)."
    )
    parser.add_argument("--size", type=parse_size, default=GiB, help="file size (default 1GiB)")
    parser.add_argument("--rounds", type=int, default=5, help="uploads per server (default 5)")
    parser.add_argument(
        "--chunk-size",
        type=parse_size,
        default=100 * MiB,
        help="tus-js-client's chunkSize: bytes per PATCH, and the chunk endpoint's chunk"
        " size (default 100MiB)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(ALL_SERVERS),
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        help="which tus servers, in round order (default chute,node,tuspy)",
    )
    parser.add_argument(
        "--no-chunk-endpoint",
        dest="chunk_endpoint",
        action="store_false",
        help="skip the chunk endpoint's upload in each round",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=RESULTS_DIR / "tmp",
        help="where the CSV file and every server's data go (default bench/results/tmp)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.size % 64 or args.size <= 0:
        parser.error("--size must be a positive multiple of 64 bytes")
    if args.chunk_size <= 0:
        parser.error("--chunk-size must be positive")
    if unknown := set(args.servers) - set(ALL_SERVERS):
        parser.error(f"unknown servers {sorted(unknown)}: choose among {', '.join(ALL_SERVERS)}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sys.exit(run(args))
    except Exception as exc:  # a sanity check, a server that failed, a connection lost
        print(
            f"tus_bench: the benchmark could not run: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
