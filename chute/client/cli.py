"""The user commands of `chute`: login, upload, jobs, status, token.

Where they find their server and token, first match wins:
server: `--server`, `CHUTE_SERVER`, the server of the last `chute login`, the default;
token: `CHUTE_TOKEN` (an API token from `chute token create`, say), the token
`chute login` stored for that server.

Exit status: 0 done, 1 the server refused or the job did not succeed, 2 bad usage
(a bad option or file), 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from chute.client import render
from chute.client.api import DEFAULT_SERVER, Client
from chute.client.errors import ApiError, ChuteClientError
from chute.client.models import ACCEPTING_STATUSES, Job
from chute.client.progress import Progress as UploadProgress
from chute.client.stall import STALL_TIMEOUT
from chute.client.state import Credentials, UploadRecords
from chute.client.units import parse_size

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input on the command line: exit 2."""


def _console(stderr: bool = False) -> Console:
    # No markup: job names, file names and server details are printed as they are.
    console = Console(stderr=stderr, markup=False)
    if not console.is_terminal:
        # Piped or captured: wide enough that a SHA-256 or a table is not folded.
        console.width = 200
    return console


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_arg(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number from {low} to {high}")
        return int(text)

    return parse


def _seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def _id_arg(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a positive integer)")
        return int(text)

    return parse


_job_id_arg = _id_arg("a job id")


def _server(args: argparse.Namespace) -> str:
    server = (
        args.server
        or os.environ.get("CHUTE_SERVER")
        or Credentials().default_server()
        or DEFAULT_SERVER
    )
    return str(server).rstrip("/")


def _client(args: argparse.Namespace, err: Console | None = None) -> Client:
    """A client for the command's server and token; retries are told on `err`, the
    console that also draws the progress bar, so the two do not garble each other."""
    err = err or _console(stderr=True)

    def say_retry(message: str) -> None:
        err.print(render.clean(message), style="yellow", markup=False, highlight=False)

    server = _server(args)
    token = os.environ.get("CHUTE_TOKEN") or Credentials().token(server)
    if not token:
        raise ChuteClientError(
            f"not signed in to {server}: run `chute login --server {server}` or set CHUTE_TOKEN"
        )
    stall = getattr(args, "stall_timeout", None)
    return Client(server, token, on_retry=say_retry, stall_timeout=stall or STALL_TIMEOUT)


def _run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, turning what it raises into a message and an exit status.
    Messages may hold the server's words or a file's name: they are `clean`ed."""
    try:
        return command(args)
    except UsageError as exc:
        print(f"chute: {render.clean(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        hint = ""
        if exc.status == 401 and os.environ.get("CHUTE_TOKEN"):
            hint = " Check CHUTE_TOKEN (revoked or expired?), or unset it and run `chute login`."
        elif exc.status == 401:
            hint = " Run `chute login` again, or set CHUTE_TOKEN."
        detail = render.clean(exc.detail)
        print(f"chute: the server said: {detail} (HTTP {exc.status}).{hint}", file=sys.stderr)
        return EXIT_FAILED
    except ChuteClientError as exc:
        print(f"chute: {render.clean(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("chute: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- login ------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    server = _server(args)
    username = args.user or input("User: ")
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    with Client(server) as client:
        token = client.request_token(username, password)
    where = Credentials().save(server, token)
    print(f"Signed in to {server} as {username}; token stored in {where}.")
    return 0


# --- upload -----------------------------------------------------------------------------


def _job_for_file(client: Client, args: argparse.Namespace, path: Path) -> tuple[Job, str]:
    """The job to send `path` to, and a few words on how it was found.

    A file already sent from this machine to this server (same absolute path, size
    and mtime) has its job in `UploadRecords`. Without `--job`/`--new`, that job is
    taken whatever its status, so a re-run after the upload finished does nothing.
    With `--new NAME`, it is taken only while its upload is unfinished, so re-running
    the very command that was interrupted resumes it; otherwise a new job is made.
    """
    records = UploadRecords()
    if args.job is not None:
        return client.job(args.job), "as asked"
    known = records.job_for(client.server, path)
    if known is not None:
        try:
            job = client.job(known)
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:
            if args.new:
                reusable = job.status in ACCEPTING_STATUSES
            else:
                reusable = job.status not in ("cancelled", "upload_expired")
            if reusable:
                return job, "found from an earlier run"
    job = client.create_job(args.new or path.name)
    # Remembered before the first byte: a run killed at any point is found again.
    records.remember(client.server, path, job.id)
    return job, "new"


class _Bar:
    """The rich progress bar, fed from the sender threads."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.task: TaskID | None = None

    def __call__(self, p: UploadProgress) -> None:
        description = f"job {p.job_id}: chunk {p.chunks_done}/{p.total_chunks}"
        if self.task is None:
            # Bytes the server already held start the bar, so the speed is of this run only.
            self.task = self.progress.add_task(
                description, total=p.total_bytes, completed=p.done_bytes
            )
        else:
            self.progress.update(self.task, completed=p.done_bytes, description=description)


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    if not path.exists():
        raise UsageError(f"no such file: {args.file}")
    if not path.is_file():
        raise UsageError(f"not a regular file: {args.file}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {args.file}: permission denied")
    out, err = _console(), _console(stderr=True)
    with _client(args, err) as client:
        job, how = _job_for_file(client, args, path.resolve())
        if job.status in ACCEPTING_STATUSES:
            err.print(
                f"Job {job.id} ({render.clean(job.name)}), {how}: sending {render.clean(path.name)}"
            )
            bar = _Bar(err)
            try:
                with bar.progress:
                    summary = client.upload(
                        job.id,
                        path,
                        chunk_size=args.chunk_size,
                        parallel=args.parallel,
                        limit_rate=args.limit_rate,
                        on_progress=bar,
                    )
            except KeyboardInterrupt:
                err.print(
                    f"Interrupted. Run the same command again to send the rest of job {job.id}."
                )
                return EXIT_INTERRUPTED
            if args.chunk_size and args.chunk_size != summary.chunk_size:
                err.print(
                    f"The upload's chunk size is {summary.chunk_size} bytes, fixed by the "
                    "chunks the server already had; --chunk-size was not used."
                )
            speed = render.size_text(summary.bytes_per_second)
            err.print(
                f"Job {job.id}: sent {summary.sent_chunks} of {summary.total_chunks} chunks "
                f"({render.size_text(summary.sent_bytes)}) in {summary.seconds:.2f} s, "
                f"{speed}/s; {summary.held_chunks} were already on the server"
                + (f"; {summary.retries} retried" if summary.retries else "")
                + "."
            )
        else:
            err.print(
                f"Job {job.id} ({render.clean(job.name)}), {how}: "
                f"already uploaded ({render.clean(job.status)})."
            )
        if not args.wait:
            out.print(f"job {job.id}: {render.clean(client.job(job.id).status)}")
            return 0
        return _wait(client, job.id, out, err)


def _wait(client: Client, job_id: int, out: Console, err: Console) -> int:
    """Follow the job: a line per status, a spinner with its progress on a terminal,
    then its result."""
    seen: list[str] = []
    with err.status(f"job {job_id}: waiting") as spinner:

        def show(job: Job) -> None:
            status = render.clean(job.status)
            if not seen or seen[-1] != status:
                seen.append(status)
                err.print(f"job {job.id}: {status}")
            percent = f" {job.progress:.0f} %" if job.progress is not None else ""
            spinner.update(f"job {job.id}: {status}{percent}")

        try:
            job = client.wait(job_id, on_update=show)
        except KeyboardInterrupt:
            err.print(f"Stopped waiting; the job goes on. `chute status {job_id}` shows it.")
            return EXIT_INTERRUPTED
    out.print(render.job_view(job))
    return 0 if job.status == "succeeded" else EXIT_FAILED


# --- jobs and status --------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs(limit=args.limit)
    _console().print(render.jobs_table(jobs) if jobs else "No jobs.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.wait:
            return _wait(client, args.id, _console(), _console(stderr=True))
        job = client.job(args.id)
    _console().print(render.job_view(job))
    return 0


# --- API tokens -------------------------------------------------------------------------


def cmd_token_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            token = client.create_api_token(args.name, expires_in_days=args.expires)
        except ApiError as exc:
            if exc.status == 403 and os.environ.get("CHUTE_TOKEN"):
                raise ChuteClientError(
                    f"the server said: {exc.detail} (HTTP 403). CHUTE_TOKEN is set, and wins "
                    "over the token of `chute login`: unset it for this command."
                ) from None
            raise
    expires = (
        f"it expires {render.when_text(token.expires_at)}"
        if token.expires_at
        else "it never expires"
    )
    err = _console(stderr=True)
    err.print(f"API token {token.id} ({render.clean(token.name)}) made; {expires}.")
    err.print("Copy the secret below now: it will not be shown again.")
    # Alone on stdout, so `TOKEN=$(chute token create ci)` takes just the secret.
    print(token.secret, flush=True)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tokens = client.api_tokens()
    _console().print(render.tokens_table(tokens) if tokens else "No API tokens.")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.revoke_api_token(args.id)
    _console().print(f"API token {args.id} revoked; it no longer works.")
    return 0


# --- wiring -----------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register login, upload, jobs, status and token on the `chute` parser."""
    server_help = f"the Chute server (CHUTE_SERVER; default: last login, else {DEFAULT_SERVER})"

    login = commands.add_parser("login", help="sign in and store a token for later commands")
    login.add_argument("--server", help=server_help)
    login.add_argument("--user", help="user name (asked when missing)")
    login.set_defaults(func=lambda a: _run(cmd_login, a))

    upload = commands.add_parser(
        "upload", help="send a CSV file as a job's data; run it again to resume"
    )
    upload.add_argument("file", help="the CSV file")
    which = upload.add_mutually_exclusive_group()
    which.add_argument("--job", type=_job_id_arg, help="send to this existing job")
    which.add_argument("--new", metavar="NAME", help="always create a new job with this name")
    upload.add_argument("--server", help=server_help)
    upload.add_argument(
        "--parallel", type=_count_arg(1, 32), help="chunks in flight (default: the server's)"
    )
    upload.add_argument(
        "--chunk-size", type=_size_arg, help="e.g. 100M or 64KiB (default: the server's)"
    )
    upload.add_argument(
        "--limit-rate", type=_size_arg, metavar="RATE", help="most bytes a second, e.g. 20M"
    )
    upload.add_argument(
        "--wait", action="store_true", help="then wait for the job and show its result"
    )
    upload.add_argument(
        "--stall-timeout",
        type=_seconds_arg,
        metavar="SECONDS",
        help=f"send a chunk again when it has moved no byte for this long "
        f"(default: {STALL_TIMEOUT:g})",
    )
    upload.set_defaults(func=lambda a: _run(cmd_upload, a))

    jobs = commands.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--server", help=server_help)
    jobs.add_argument("--limit", type=_count_arg(1, 200), default=20, help="how many (1-200)")
    jobs.set_defaults(func=lambda a: _run(cmd_jobs, a))

    status = commands.add_parser("status", help="one job, with its result when it has one")
    status.add_argument("id", type=_job_id_arg)
    status.add_argument("--server", help=server_help)
    status.add_argument(
        "--wait", action="store_true", help="follow the job until it ends, then show it"
    )
    status.set_defaults(func=lambda a: _run(cmd_status, a))

    token = commands.add_parser("token", help="API tokens for scripts and pipelines")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="make a token; its secret is printed once, on stdout"
    )
    create.add_argument("name", help="what it is for, e.g. nightly-export (1-100 characters)")
    create.add_argument(
        "--expires", type=_count_arg(1, 3650), metavar="DAYS", help="expire after DAYS days"
    )
    create.add_argument("--server", help=server_help)
    create.set_defaults(func=lambda a: _run(cmd_token_create, a))
    listing = token_commands.add_parser("list", help="your tokens, with their last use")
    listing.add_argument("--server", help=server_help)
    listing.set_defaults(func=lambda a: _run(cmd_token_list, a))
    revoke = token_commands.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("id", type=_id_arg("a token id"), help="its id, from `chute token list`")
    revoke.add_argument("--server", help=server_help)
    revoke.set_defaults(func=lambda a: _run(cmd_token_revoke, a))
