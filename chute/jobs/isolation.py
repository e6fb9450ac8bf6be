"""Runs a job kind in a child process of its own.

Why not in the worker's thread: a kind is plugin code (and DuckDB) that may crash,
leak memory or hold the GIL, and the worker's own threads (queue polling, heartbeats)
slowed DuckDB's pass over the file by 10-15 % when they shared its process. A child
also gives its memory back when it ends, and can be killed when a job is cancelled.

The child reports progress through a shared number and learns of a cancel through a
shared event; its outcome comes back through a pipe. It dies with its parent (Linux).

Starting Python and importing a kind (DuckDB) takes about 0.3 s of CPU, so the worker
keeps one child started ahead, waiting for its job; a child runs one job only, and the
next one is started when that job ends, when the machine has the CPU to spare.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import multiprocessing
import multiprocessing.util  # its exit handler first, so that ours runs before it
import resource
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from chute.config import Settings
from chute.jobs.kinds import MAX_ERROR, JobCancelled, JobFailed, cut_text, cut_texts, load_kinds
from chute.logs import configure

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Seconds a cancelled child has to stop by itself before it is killed.
STOP_GRACE = 5.0
POLL_SECONDS = 0.2
UNEXPECTED = "The job stopped on an unexpected error; the server's log has the details."

_context = multiprocessing.get_context("spawn")


class _Child:
    """A started child process, waiting for the one job it will run."""

    def __init__(self) -> None:
        self.percent = _context.Value("d", 0.0, lock=False)
        self.cancel = _context.Event()
        self.tasks, task_end = _context.Pipe(duplex=False)[::-1]
        self.outcomes, outcome_end = _context.Pipe(duplex=False)
        self.process = _context.Process(
            target=_child,
            args=(self.percent, self.cancel, task_end, outcome_end),
            name="chute-job",
        )
        self.process.start()
        task_end.close()
        outcome_end.close()

    def discard(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.tasks.close()
        self.outcomes.close()


_spare: _Child | None = None
_spare_lock = threading.Lock()


@atexit.register
def _discard_spare() -> None:
    # Before multiprocessing's own exit handler, which would wait for the child to end.
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None:
        child.discard()


def start_spare() -> None:
    """Start a child ahead of the next job, unless one is waiting already."""
    global _spare
    with _spare_lock:
        if _spare is None or not _spare.process.is_alive():
            _spare = _Child()


def _take_child() -> _Child:
    """The waiting child if there is one (the next job's is started later), else a new one."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None and child.process.is_alive():
        return child
    if child is not None:
        child.discard()
    return _Child()


def run_isolated(
    kind: str,
    input_path: Path,
    params: dict[str, Any],
    extras: dict[str, Any],
    progress: Callable[[float], None],
) -> dict[str, Any]:
    """Run `kind` in a child and return its result. Raises JobFailed with the kind's own
    words (or plain ones if it crashed), and JobCancelled when `progress` raised it."""
    child = _take_child()
    try:
        outcome = _run(child, (kind, input_path, params, extras), progress)
    finally:
        child.discard()
        start_spare()
    status, value = outcome[0], outcome[1]
    if len(outcome) > 2:
        peak, cpu = outcome[2]
        log.info(
            "job process %s: peak RSS %.0f MB, CPU %.2f s user %.2f s system",
            child.process.pid,
            peak / 1e6,
            *cpu,
        )
    if status == "ok":
        result: dict[str, Any] = value
        return result
    if status == "failed":
        raise JobFailed(str(value))
    if status == "cancelled":
        raise JobCancelled()
    if status == "died":
        exitcode = child.process.exitcode
        log.error("job process died (exit code %s)", exitcode)
        raise JobFailed(
            "The job's process stopped unexpectedly"
            + (" (killed: out of memory?)." if exitcode == -signal.SIGKILL else ".")
        )
    raise JobFailed(UNEXPECTED)


def _run(
    child: _Child, task: tuple[Any, ...], progress: Callable[[float], None]
) -> tuple[Any, ...]:
    """Hand `task` to `child` and follow it to its end: its outcome, or ("died", None)."""
    with contextlib.suppress(OSError):  # a child that died waiting: found below
        child.tasks.send(task)
    while not child.outcomes.poll(POLL_SECONDS):
        if not child.process.is_alive():
            break
        try:
            progress(child.percent.value)
        except JobCancelled:
            child.cancel.set()
            child.process.join(STOP_GRACE)
            raise
    outcome: tuple[Any, ...] = ("died", None)
    if child.outcomes.poll(0):  # also true at end of file: a child that died sent nothing
        with contextlib.suppress(EOFError):
            outcome = child.outcomes.recv()
    return outcome


def _child(percent: Any, cancel: Event, tasks: Connection, send: Connection) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    configure(Settings().log_format)  # the worker's settings, from the same environment
    try:
        kinds = load_kinds()  # imports every kind's code ahead of the job
    except Exception:
        log.exception("loading the job kinds failed")
        kinds = {}
    try:
        kind_name, input_path, params, extras = tasks.recv()
    except EOFError:  # the worker stopped before giving this child a job
        return
    finally:
        tasks.close()

    def progress(value: float) -> None:
        if cancel.is_set():
            raise JobCancelled()
        percent.value = max(0.0, min(float(value), 100.0))

    try:
        if kind_name not in kinds:
            raise LookupError(f"job kind {kind_name!r} could not be loaded")
        kind = kinds[kind_name]
        result = kind.run(input_path, params, progress, **extras)
        if not isinstance(result, dict):
            raise TypeError(f"job kind {kind_name!r} returned {type(result).__name__}, not a dict")
        result = cut_texts(result)
        json.dumps(result)  # it is stored as JSON: fail here, in plain sight, if it is not
        send.send(("ok", result, _usage()))
    except JobCancelled:
        send.send(("cancelled", None, _usage()))
    except JobFailed as exc:
        send.send(("failed", cut_text(str(exc), MAX_ERROR), _usage()))
    except Exception:
        log.exception("job kind %r failed", kind_name)
        send.send(("error", None, _usage()))
    finally:
        send.close()


def _usage() -> tuple[int, tuple[float, float]]:
    """This process's peak resident set in bytes (Linux reports KiB), and its CPU seconds
    (user, system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss * 1024, (usage.ru_utime, usage.ru_stime)
