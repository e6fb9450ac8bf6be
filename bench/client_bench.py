"""How close `chute upload` comes to what the server can take, and the client's memory.

On one `chute serve` (by default `--workers 2`, the server benchmark's 3-in-flight
scenario), each round sends the same file three times:

1. with `rawhttp.py`, the server benchmark's client: sendfile, SHA-256s computed
   beforehand and not timed. This is "what the server takes".
2. with `chute upload FILE --parallel N`, a real process, as a user runs it. Its
   own figure covers hashing every chunk, the status call and every chunk's
   answer (the summary line it prints); the command's wall time, start-up and job
   creation included, is shown too.
3. a control: `chute.client`'s upload in this process, every chunk's SHA-256 taken
   from the list made before the clock (as rawhttp has them) instead of computed.
   The gap from 1 to 3 is what the client's sending costs; from 3 to 2, its hashing.

Then `chute upload` runs again with the largest chunks the server takes (256 MiB),
3 and 16 asked in flight, and once more on a 4 GiB file (`--big-mib`), to show that its
peak RSS follows neither the chunk size, nor the number in flight, nor the file
size. Peak RSS is the process's ru_maxrss (wait4).

    .venv/bin/python bench/client_bench.py [--size-mib 1024] [--repeat 3] [--workers 2]
                                           [--split-cores]

On a machine whose few cores the server keeps busy, every CPU second the client
spends (its SHA-256s above all) is taken from the server, which rawhttp, with its
hashes made before the clock starts, does not do. `--split-cores` gives each side
cores of its own, as two machines would: the server runs on the first half of
this process's cores (`taskset`), both clients on the other half. Then the
comparison shows whether the client keeps up with what the server takes, not how
the two share a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rawhttp import Source, call, send_file
from servers import Server, free_port, running
from upload_bench import (
    _create_job,
    _delete_job,
    _sign_in,
    bench_env,
    chute_env,
    hash_source,
    warm,
    write_csv,
)

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
PYTHON = sys.executable
MiB = 1024 * 1024
MB = 1_000_000
GOAL_SHARE = 0.90
GOAL_RSS = 100 * MB
SUMMARY = re.compile(r"sent (\d+) of (\d+) chunks \(.*?\) in ([\d.]+) s")


@dataclass
class ClientRun:
    label: str
    chunk_size: int
    parallel: int  # asked for; the client never runs more than the file has chunks
    file_size: int
    upload_seconds: float  # the command's own figure: first hash to last answer
    wall_seconds: float  # the whole command, Python start-up included
    peak_rss: int  # bytes
    cpu_seconds: float
    machine_cpu_seconds: float  # every core's busy time while the command ran

    @property
    def mb_per_s(self) -> float:
        return self.file_size / self.upload_seconds / MB


def _delete_all(port: int, token: str) -> None:
    """Every job goes, with its file: gigabytes of old uploads in the page cache slow
    later writes on this machine (bench/README.md)."""
    answer = call(port, "GET", "/api/job?limit=200", {"Authorization": f"Bearer {token}"})
    for job in answer.json()["items"]:
        _delete_job(port, token, int(job["id"]))


def run_client(
    label: str, port: int, token: str, home: Path, path: Path, chunk_size: int, parallel: int
) -> ClientRun:
    env = bench_env(
        {"HOME": str(home), "CHUTE_SERVER": f"http://127.0.0.1:{port}", "CHUTE_TOKEN": token}
    )
    argv = [PYTHON, "-m", "chute", "upload", str(path), "--new", "bench"]
    argv += ["--chunk-size", str(chunk_size), "--parallel", str(parallel)]
    busy_before = machine_busy()
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    busy = machine_busy() - busy_before
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stdout is not None and process.stderr is not None
    stderr = process.stderr.read().decode(errors="replace")
    process.stdout.close()
    process.stderr.close()
    found = SUMMARY.search(stderr)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"chute upload failed ({process.returncode}):\n{stderr}")
    sent, total, seconds = int(found[1]), int(found[2]), float(found[3])
    if sent != total:
        raise RuntimeError(f"chute upload sent {sent} of {total} chunks:\n{stderr}")
    return ClientRun(
        label,
        chunk_size,
        parallel,
        path.stat().st_size,
        seconds,
        wall,
        usage.ru_maxrss * 1024,  # KiB on Linux
        usage.ru_utime + usage.ru_stime,
        busy,
    )


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy since boot, from /proc/stat:
    user and kernel time of all processes (the server's, the client's, the kernel's own
    writeback and network work). 0 where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0
    ticks = 0
    for line in lines:
        if line.startswith("cpu "):
            fields = [int(f) for f in line.split()[1:]]
            # user, nice, system, irq, softirq, steal: all but idle and iowait
            ticks = sum(fields[:8]) - fields[3] - fields[4]
            break
    return ticks / os.sysconf("SC_CLK_TCK")


def sha256_seconds_per_gib() -> float:
    """CPU seconds hashlib's SHA-256 takes per GiB held in memory on this machine: the
    least a client pays for the `chunk_sha256` the protocol asks of it."""
    block = os.urandom(64 * MiB)
    digest = hashlib.sha256()
    before = time.process_time()
    for _ in range(8):
        digest.update(block)
    return (time.process_time() - before) / (8 * 64 * MiB / 2**30)


def run_prehashed(port: int, token: str, path: Path, source: Source, parallel: int) -> float:
    """MB/s of `chute.client`'s own upload, in this process, with every chunk's SHA-256
    taken from `source` (made before the clock) instead of computed: the control that
    shows what the sending path costs without the hashing the protocol asks of a client."""
    from chute.client import Client
    from chute.client import upload as upload_module

    def known(sender: upload_module.Sender, fd: int, piece: upload_module.Piece) -> str:
        sender.chunk0_ok.set()  # what the check of chunk 0 would do
        return source.chunk_sha256[piece.index]

    hashing = upload_module.Sender._hash
    upload_module.Sender._hash = known  # type: ignore[method-assign]
    try:
        with Client(f"http://127.0.0.1:{port}", token) as client:
            job = client.create_job("bench control")
            summary = client.upload(job.id, path, chunk_size=source.chunk_size, parallel=parallel)
    finally:
        upload_module.Sender._hash = hashing  # type: ignore[method-assign]
    return summary.file_size / summary.seconds / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--chunk-mib", type=int, default=100, help="chunk size (default 100)")
    parser.add_argument("--parallel", type=int, default=3, help="chunks in flight (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--big-mib", type=int, default=4096, help="file size of the last memory run (0: none)"
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="server on the first half of the cores, clients on the other half",
    )
    parser.add_argument("--tmp-dir", type=Path, default=BENCH_DIR / "results" / "tmp")
    args = parser.parse_args()
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB

    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="client-bench-", dir=args.tmp_dir))
    try:
        csv = work / "bench.csv"
        write_csv(csv, size)
        source = hash_source(csv, size, chunk)
        port = free_port()
        env = chute_env(work / "data", port, CHUTE_CHUNK_SIZE=str(chunk))
        # No job worker: profiling each gigabyte would compete for the cores with the
        # next upload. The jobs stay queued and are deleted.
        argv = [PYTHON, "-m", "chute", "serve", "--workers", str(args.workers), "--no-worker"]
        cores = sorted(os.sched_getaffinity(0))
        server_cores = client_cores = cores
        if args.split_cores:
            if len(cores) < 2:
                parser.error("--split-cores needs at least 2 cores")
            server_cores, client_cores = cores[: len(cores) // 2], cores[len(cores) // 2 :]
            argv = ["taskset", "-c", ",".join(map(str, server_cores)), *argv]
            # This process sends with rawhttp; `chute upload` inherits the mask.
            os.sched_setaffinity(0, client_cores)
            print(f"[client-bench] server on cores {server_cores}, clients on {client_cores}")
        server = Server(argv, env, port, args.workers, work / "server.log")
        raw: list[float] = []
        raw_cpu: list[float] = []  # seconds, of the sending alone (hashes were made before)
        raw_machine: list[float] = []  # CPU seconds of every core, during rawhttp's upload
        raw_busy: list[float] = []  # the share of the machine's cores busy then
        machine_cores = os.cpu_count() or 1
        runs: list[ClientRun] = []
        control: list[float] = []  # MB/s, chute.client with the SHA-256s given
        with running(server, PROJECT_DIR):
            token = _sign_in(port)
            for round_ in range(args.repeat):
                print(f"[client-bench] round {round_ + 1} of {args.repeat}", file=sys.stderr)
                os.sync()
                warm(source)
                job = _create_job(port, token)
                before = resource.getrusage(resource.RUSAGE_SELF)
                busy_before = machine_busy()
                sent = send_file(port, f"/api/job/{job}/upload-data", token, source, args.parallel)
                raw_machine.append(machine_busy() - busy_before)
                after = resource.getrusage(resource.RUSAGE_SELF)
                raw.append(sent.bytes_per_second / MB)
                raw_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                raw_busy.append(raw_machine[-1] / (size / sent.bytes_per_second) / machine_cores)
                _delete_all(port, token)
                os.sync()
                warm(source)
                runs.append(run_client("speed", port, token, work, csv, chunk, args.parallel))
                _delete_all(port, token)
                os.sync()
                warm(source)
                control.append(run_prehashed(port, token, csv, source, args.parallel))
                _delete_all(port, token)
            # Memory: the largest chunks the server takes, many in flight.
            big = 256 * MiB
            for parallel in (args.parallel, 16):
                os.sync()
                runs.append(run_client("memory", port, token, work, csv, big, parallel))
                _delete_all(port, token)
            if args.big_mib:
                # A larger file: the client's memory must not follow the file size either.
                csv.unlink()
                csv = work / "big.csv"
                write_csv(csv, args.big_mib * MiB)
                os.sync()
                runs.append(run_client("memory", port, token, work, csv, big, 16))
                _delete_all(port, token)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    speed = [r for r in runs if r.label == "speed"]
    raw_mb = statistics.median(raw)
    client_mb = statistics.median(r.mb_per_s for r in speed)
    wall_mb = statistics.median(size / r.wall_seconds / MB for r in speed)
    share = client_mb / raw_mb
    peak = max(r.peak_rss for r in runs)
    print(
        f"\n{size // MiB} MiB file in {args.chunk_mib} MiB chunks, {args.parallel} in flight, "
        f"chute serve --workers {args.workers}, medians of {args.repeat}; MB = 10^6 bytes"
    )
    print(f"  server on cores {server_cores}, clients on {client_cores}")
    print(f"  server benchmark client (rawhttp, sendfile): {raw_mb:7.1f} MB/s  {_runs(raw)}")
    print(
        f"  chute upload, its own figure:                {client_mb:7.1f} MB/s  "
        f"{_runs([r.mb_per_s for r in speed])}  = {share:.0%} (goal >= {GOAL_SHARE:.0%}) "
        f"{'PASS' if share >= GOAL_SHARE else 'FAIL'}"
    )
    print(f"  chute upload, whole command (start-up incl.): {wall_mb:6.1f} MB/s")
    control_mb = statistics.median(control)
    print(
        f"  control: chute.client, SHA-256s given:      {control_mb:7.1f} MB/s  "
        f"{_runs(control)}  = {control_mb / raw_mb:.0%}"
    )
    gib = size / 2**30
    cpu = statistics.median(r.cpu_seconds for r in speed) / gib
    print(
        f"  client CPU per GiB: chute upload {cpu:.2f} s (start-up and hashing included), "
        f"rawhttp {statistics.median(raw_cpu) / gib:.2f} s (sending only)"
    )
    if raw_machine[0] > 0:
        raw_machine_gib = statistics.median(raw_machine) / gib
        hashing = sha256_seconds_per_gib()
        print(
            f"  machine CPU per GiB, all {machine_cores} cores, kernel included: "
            f"rawhttp {raw_machine_gib:.2f} s ({statistics.median(raw_busy):.0%} of the cores "
            f"busy), chute upload "
            f"{statistics.median(r.machine_cpu_seconds for r in speed) / gib:.2f} s "
            f"(start-up included)"
        )
        print(f"  SHA-256 in memory: {hashing:.2f} CPU s per GiB")
        if not args.split_cores:
            # Every CPU second of hashing is one the server does not get.
            print(
                "  so with the cores busy and shared, a hashing client reaches about "
                f"{raw_machine_gib / (raw_machine_gib + hashing):.0%} of rawhttp"
            )
    print("  chute upload peak RSS:")
    for r in runs:
        print(
            f"    {r.file_size // MiB:5d} MiB file, {r.chunk_size // MiB:4d} MiB chunks, "
            f"{min(r.parallel, -(-r.file_size // r.chunk_size))} in flight: "
            f"{r.peak_rss / MB:6.1f} MB  ({r.mb_per_s:.0f} MB/s)"
        )
    print(
        f"  highest: {peak / MB:.1f} MB (goal < {GOAL_RSS / MB:.0f} MB) "
        f"{'PASS' if peak < GOAL_RSS else 'FAIL'}"
    )
    sys.exit(0 if share >= GOAL_SHARE and peak < GOAL_RSS else 1)


def _runs(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in values) + ")"


if __name__ == "__main__":
    main()
