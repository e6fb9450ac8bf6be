"""Runs a job kind in a child process of its own.

Why not in the worker's thread: a kind is plugin code (and DuckDB) that may crash,
leak memory or hold the GIL, and the worker's own threads (queue polling, heartbeats)
slowed DuckDB's pass over the file by 10-15 % when they shared its process. A child
also gives its memory back when it ends, and can be killed when a job is cancelled.

The child reports progress through a shared number and learns of a cancel through a
shared event; its outcome comes back through a pipe. It dies with its parent (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import resource
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from chute.jobs.kinds import JobCancelled, JobFailed, load_kinds

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Seconds a cancelled child has to stop by itself before it is killed.
STOP_GRACE = 5.0
POLL_SECONDS = 0.2
UNEXPECTED = "The job stopped on an unexpected error; the server's log has the details."

_context = multiprocessing.get_context("spawn")


def run_isolated(
    kind: str,
    input_path: Path,
    params: dict[str, Any],
    extras: dict[str, Any],
    progress: Callable[[float], None],
) -> dict[str, Any]:
    """Run `kind` in a child and return its result. Raises JobFailed with the kind's own
    words (or plain ones if it crashed), and JobCancelled when `progress` raised it."""
    percent = _context.Value("d", 0.0, lock=False)
    cancel = _context.Event()
    receive, send = _context.Pipe(duplex=False)
    child = _context.Process(
        target=_child,
        args=(kind, input_path, params, extras, percent, cancel, send),
        name=f"chute-job-{kind}",
    )
    child.start()
    send.close()
    try:
        while not receive.poll(POLL_SECONDS):
            if not child.is_alive():
                break
            try:
                progress(percent.value)
            except JobCancelled:
                cancel.set()
                child.join(STOP_GRACE)
                raise
        outcome: tuple[Any, ...] = ("died", None)
        if receive.poll(0):  # also true at end of file: a child that died sent nothing
            with contextlib.suppress(EOFError):
                outcome = receive.recv()
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    status, value = outcome[0], outcome[1]
    if len(outcome) > 2:
        log.info("job process %s: peak RSS %.0f MB", child.pid, outcome[2] / 1e6)
    if status == "ok":
        result: dict[str, Any] = value
        return result
    if status == "failed":
        raise JobFailed(str(value))
    if status == "cancelled":
        raise JobCancelled()
    if status == "died":
        log.error("job process died (exit code %s)", child.exitcode)
        raise JobFailed(
            "The job's process stopped unexpectedly"
            + (" (killed: out of memory?)." if child.exitcode == -signal.SIGKILL else ".")
        )
    raise JobFailed(UNEXPECTED)


def _child(
    kind_name: str,
    input_path: Path,
    params: dict[str, Any],
    extras: dict[str, Any],
    percent: Any,
    cancel: Event,
    send: Connection,
) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def progress(value: float) -> None:
        if cancel.is_set():
            raise JobCancelled()
        percent.value = max(0.0, min(float(value), 100.0))

    try:
        kind = load_kinds()[kind_name]
        result = kind.run(input_path, params, progress, **extras)
        if not isinstance(result, dict):
            raise TypeError(f"job kind {kind_name!r} returned {type(result).__name__}, not a dict")
        json.dumps(result)  # it is stored as JSON: fail here, in plain sight, if it is not
        send.send(("ok", result, _peak_rss()))
    except JobCancelled:
        send.send(("cancelled", None, _peak_rss()))
    except JobFailed as exc:
        send.send(("failed", str(exc), _peak_rss()))
    except Exception:
        log.exception("job kind %r failed", kind_name)
        send.send(("error", None, _peak_rss()))
    finally:
        send.close()


def _peak_rss() -> int:
    """This process's peak resident set, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
