"""Server processes under test: started in their own process group, found and measured
through /proc, stopped as a group.

Memory is read from /proc/<pid>/status: VmRSS (now) and VmHWM (the peak, "high water
mark"). Writing 5 to /proc/<pid>/clear_refs resets VmHWM to the current RSS, so a peak
can be taken over a part of a process's life (the uploads) as well as over all of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
STARTUP_LINE = "Application startup complete."  # uvicorn logs it once per API process


class ServerError(Exception):
    """The server did not start, or stopped answering."""


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str
    rss: int  # bytes resident now
    peak: int  # bytes, the most resident since start or since the last reset


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc/<pid>/stat."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, breadth-first, siblings by pid."""
    parents = _parent_pids()
    found = [root] if root in parents else []
    for pid in found:  # grows while it is walked
        found += sorted(child for child, parent in parents.items() if parent == pid)
    return found


def _status(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM of `pid` in bytes, or None when it is gone."""
    values = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values if len(values) == 2 else None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class Server:
    """A server command started in its own session, so its whole tree is one group.
    `api_processes` is how many uvicorn start-up lines mean ready; 0 for a server that
    is not uvicorn (ready once its port takes connections)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], port: int, api_processes: int, log_path: Path
    ) -> None:
        self.argv = argv
        self.env = env
        self.port = port
        self.api_processes = api_processes
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Ready once every API process has run its startup and the port takes connections.
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode  # negative: the signal that ended it
                raise ServerError(f"the server exited early ({status}):\n{self.log_tail()}")
            log_text = self.log_path.read_text(errors="replace")
            if log_text.count(STARTUP_LINE) >= self.api_processes and self._accepts():
                return
            time.sleep(0.1)
        raise ServerError(f"the server was not ready in {READY_TIMEOUT:.0f} s")

    def _accepts(self) -> bool:
        try:
            socket.create_connection((HOST, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pids(self) -> list[int]:
        """The server's processes: the one started and every one below it."""
        assert self.process is not None
        return _descendants(self.process.pid)

    def memory(self) -> list[ProcessMemory]:
        """Every process of the server, with what it is and its memory."""
        assert self.process is not None
        root = self.process.pid
        found = []
        workers = 0
        for pid in _descendants(root):
            status = _status(pid)
            if status is None:
                continue
            args = _cmdline(pid)
            if pid == root:
                role = "API" if self.api_processes <= 1 else "supervisor"
            elif "chute worker" in args:
                role = "job worker"
            elif "resource_tracker" in args:
                role = "resource tracker"
            elif "multiprocessing" in args:
                workers += 1
                role = f"API worker {workers}"
            else:
                role = args.split(" ")[0].rsplit("/", 1)[-1] or f"pid {pid}"
            found.append(ProcessMemory(pid, role, status["VmRSS"], status["VmHWM"]))
        return found

    def reset_peaks(self) -> None:
        """Start every process's VmHWM again from its current RSS."""
        assert self.process is not None
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        """End the whole process group: uvicorn, its workers and the job worker."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        # Members of the group may outlive the leader a little (the job worker stops last).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(group):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running(server: Server, cwd: Path) -> Iterator[Server]:
    """The server, started and ready; stopped on the way out, whatever happened.
    A failure inside carries the tail of the server's log."""
    try:
        server.start(cwd)
        yield server
    except Exception as exc:
        raise ServerError(f"{exc}\n--- server log (tail) ---\n{server.log_tail()}") from exc
    finally:
        server.stop()
