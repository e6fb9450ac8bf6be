"""The `chute` command: serve, worker, users; and for users: login, upload, jobs, status."""

from __future__ import annotations

import argparse
import errno
import getpass
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from chute.logs import configure

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from chute.config import Settings
    from chute.db.models import User


def _settings() -> Settings:
    """The settings from the environment, or an exit with plain words saying what is wrong."""
    # Imported here: the user commands (upload, jobs, ...) need no server settings, and
    # pydantic-settings is a tenth of a second of their start-up.
    from pydantic import ValidationError

    from chute.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = "_".join(str(part) for part in error["loc"]).upper()
            where = f"CHUTE_{field}: " if field else ""
            # The value itself is not echoed: a database URL may hold a password.
            lines.append(f"  {where}{error['msg'].removeprefix('Value error, ')}")
        raise SystemExit("chute: the configuration is not valid:\n" + "\n".join(lines)) from None


def _prepare(settings: Settings) -> None:
    """Create the data dir and bring the database schema up to date."""
    from chute.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


ADMIN_PASSWORD_FILE = "initial-admin-password"


class _AdminPassword:
    """Where the first admin's password goes: to the operator's terminal, else to a file.

    `chute serve` usually runs under a supervisor (systemd, a container runtime) whose log
    is read by others and kept for long; in the scale-out deployment, by whichever API
    process migrates first. So the password is printed only when stdout is a terminal.
    Otherwise it goes to `initial-admin-password` in the data dir, readable by the server's
    account only (0600), and the output says where, never what.
    """

    def __init__(self, data_dir: Path) -> None:
        self.interactive = sys.stdout.isatty()
        self.path = data_dir / ADMIN_PASSWORD_FILE
        self._staged: Path | None = None
        self._password = ""

    def keep(self, password: str) -> None:
        """Before the admin is committed: a file that cannot be written creates no admin."""
        self._password = password
        if self.interactive:
            return
        if self.path.is_dir():  # the one way the rename after the commit could fail
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", str(self.path))
        staged = self.path.with_name(f".{ADMIN_PASSWORD_FILE}.{os.getpid()}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when a leftover of a crashed run was there
            os.write(fd, f"{password}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._staged = staged

    def announce(self, created: bool) -> None:
        staged, self._staged = self._staged, None
        if not created:
            if staged is not None:
                staged.unlink(missing_ok=True)
            return
        if staged is None:
            print(f"Created user 'admin' with password: {self._password}", flush=True)
            print("It is shown only this once.", flush=True)
            return
        os.replace(staged, self.path)
        # Not a terminal: a supervisor's log, in the deployment's log format.
        logging.getLogger("chute.admin").info(
            "Created user 'admin'. Its password is in %s on %s, readable by this account only "
            "(it is printed only to a terminal). Sign in with it, then delete the file.",
            self.path,
            socket.gethostname(),
        )


def cmd_migrate(args: argparse.Namespace) -> int:
    from chute.auth.service import ensure_admin
    from chute.db.session import make_engine, make_sessionmaker

    settings = _settings()
    configure(settings.log_format)
    _prepare(settings)
    engine = make_engine(settings.resolved_database_url)
    password = _AdminPassword(settings.data_dir)
    created = False
    try:
        with make_sessionmaker(engine)() as session:
            created = ensure_admin(session, password.keep)
    except OSError as exc:
        # Only the password file fails so (the database's errors are not OSError).
        raise SystemExit(
            f"chute: could not write the first admin's password to {password.path}: "
            f"{exc.strerror or exc}; no user was created"
        ) from None
    finally:
        engine.dispose()
        password.announce(created)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from chute.serve import metrics_dir

    settings = _settings()
    # Migrations and the first user in a process of their own: what they import and
    # allocate then never weighs on the long-running API process.
    prepared = subprocess.run([sys.executable, "-m", "chute", "migrate"], check=False)
    if prepared.returncode != 0:
        return prepared.returncode
    # The API processes and the embedded worker count for /metrics in one place.
    with metrics_dir(settings.data_dir):
        return _serve(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from chute.serve import serve, stop_with_parent

    worker = None
    if not settings.embedded_queue:
        # Scale-out: API processes only; `chute worker` runs jobs, on any number of hosts.
        configure(settings.log_format)
        logging.getLogger("chute").info("the queue is on Redis; run `chute worker` to run jobs")
    elif not args.no_worker:
        # The embedded deployment's worker: its own process, so jobs never slow the API.
        worker = subprocess.Popen(
            [sys.executable, "-m", "chute", "worker"],
            env=os.environ.copy(),
            preexec_fn=stop_with_parent,
        )
    try:
        serve(args.host or settings.host, args.port or settings.port, args.workers)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from chute.jobs.worker import run_worker

    settings = _settings()
    _prepare(settings)
    if args.metrics_port:
        from chute.metrics import serve_on_port

        try:
            serve_on_port(args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise SystemExit(
                f"chute: cannot answer metrics on {args.metrics_host}:{args.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
    run_worker(settings, threads=args.threads)
    return 0


def _read_password() -> str | None:
    """A new password: typed twice on a terminal, else the first line of stdin. None when
    the two typed differ (said on stderr)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("chute: the passwords differ; nothing was changed.", file=sys.stderr)
            return None
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _user_command(action: Callable[[Settings, Session], str]) -> int:
    """Run `action` on the server's database (schema brought up to date first) and print
    what it says; a refusal goes to stderr in plain words, with exit code 1."""
    from chute.db.session import make_engine, make_sessionmaker
    from chute.errors import ChuteError

    settings = _settings()
    _prepare(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            said = action(settings, session)
    except (ChuteError, _Refused) as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(said)
    return 0


class _Refused(Exception):
    """What a user command says on stderr before it exits with 1."""


def clean(value: object) -> str:
    """Text from the database as safe to print (`chute.client.render.clean`)."""
    from chute.client.render import clean as escaped

    return escaped(value)


def _named(session: Session, name: str) -> User:
    from chute.auth.users import user_named
    from chute.errors import ChuteError

    try:
        return user_named(session, name)
    except ChuteError:
        raise _Refused(f"there is no user '{clean(name)}'.") from None


def cmd_user_list(args: argparse.Namespace) -> int:
    from chute.auth.users import list_users

    def action(settings: Settings, session: Session) -> str:
        rows = [("ID", "NAME", "ROLE", "STATE", "CREATED")]
        for user in list_users(session):
            rows.append(
                (
                    str(user.id),
                    clean(user.username),
                    "admin" if user.is_admin else "user",
                    "disabled" if user.disabled_at is not None else "enabled",
                    user.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    return _user_command(action)


def cmd_user_add(args: argparse.Namespace) -> int:
    from chute.auth.users import create_user

    password = _read_password()
    if password is None:
        return 1

    def action(settings: Settings, session: Session) -> str:
        user = create_user(session, args.name, password, admin=args.admin)
        role = "admin" if user.is_admin else "user"
        return f"Created {role} '{clean(user.username)}'."

    return _user_command(action)


def cmd_user_disable(args: argparse.Namespace) -> int:
    from chute.auth.users import disable_user

    def action(settings: Settings, session: Session) -> str:
        user = disable_user(session, _named(session, args.name).id, actor_id=None)
        return (
            f"Disabled '{clean(user.username)}': its sessions and tokens no longer work, "
            "and it cannot sign in until enabled."
        )

    return _user_command(action)


def cmd_user_enable(args: argparse.Namespace) -> int:
    from chute.auth.users import enable_user

    def action(settings: Settings, session: Session) -> str:
        user = enable_user(session, _named(session, args.name).id)
        return f"Enabled '{clean(user.username)}': it may sign in again."

    return _user_command(action)


def cmd_user_delete(args: argparse.Namespace) -> int:
    from chute.auth.users import delete_user, remove_files
    from chute.storage import make_storage

    if not args.yes:
        print(
            f"chute: deleting '{clean(args.name)}' removes all its jobs and files for good; "
            "run again with --yes to do it.",
            file=sys.stderr,
        )
        return 1

    def action(settings: Settings, session: Session) -> str:
        user = _named(session, args.name)
        name = user.username
        found = delete_user(session, user.id, actor_id=None)
        remove_files(make_storage(settings), found)
        return f"Deleted '{clean(name)}' and its {len(found.job_ids)} jobs with their files."

    return _user_command(action)


def cmd_user_role(args: argparse.Namespace) -> int:
    from chute.auth.users import set_admin

    def action(settings: Settings, session: Session) -> str:
        user = set_admin(
            session, _named(session, args.name).id, args.role == "admin", actor_id=None
        )
        return f"'{clean(user.username)}' is now {'an admin' if user.is_admin else 'a user'}."

    return _user_command(action)


def cmd_user_passwd(args: argparse.Namespace) -> int:
    from chute.auth.users import set_password

    password = _read_password()
    if password is None:
        return 1

    def action(settings: Settings, session: Session) -> str:
        user = set_password(session, _named(session, args.name).id, password)
        return f"Set the password of '{clean(user.username)}'; its sessions and tokens ended."

    return _user_command(action)


def cmd_backup(args: argparse.Namespace) -> int:
    from chute.backup import BackupError, backup

    try:
        copied = backup(_settings(), Path(args.dest))
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"chute: no backup taken: {exc}", file=sys.stderr)
        return 1
    print(
        f"Backed up {', '.join(copied.databases)} and {copied.files} files "
        f"({copied.bytes / 1e6:.1f} MB) to {args.dest}. Serve it with CHUTE_DATA_DIR={args.dest}."
    )
    return 0


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"not a port from 1 to 65535: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the API (and, with the embedded queue, its worker)"
    )
    serve.add_argument("--host", help="address to listen on (CHUTE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (CHUTE_PORT)")
    serve.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    serve.add_argument("--no-worker", action="store_true", help="do not start a job worker")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the database schema, and the first user"
    )
    migrate.set_defaults(func=cmd_migrate)

    worker = commands.add_parser("worker", help="run a job worker")
    worker.add_argument("--threads", type=int, default=2, help="jobs run at once (default 2)")
    worker.add_argument(
        "--metrics-port",
        type=_port,
        help="answer Prometheus scrapes of this worker's job and sweeper figures on this port "
        "(for a worker that `chute serve` did not start; no sign-in: keep it private)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (default 127.0.0.1)",
    )
    worker.set_defaults(func=cmd_worker)

    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    listing = user_commands.add_parser("list", help="list the users, their role and state")
    listing.set_defaults(func=cmd_user_list)
    add = user_commands.add_parser("add", help="create a user (password from stdin if piped)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="an admin: may manage users")
    add.set_defaults(func=cmd_user_add)
    disable = user_commands.add_parser(
        "disable", help="stop a user: sign-in refused, sessions and tokens end at once"
    )
    disable.add_argument("name")
    disable.set_defaults(func=cmd_user_disable)
    enable = user_commands.add_parser("enable", help="let a disabled user sign in again")
    enable.add_argument("name")
    enable.set_defaults(func=cmd_user_enable)
    remove = user_commands.add_parser(
        "delete", help="delete a user with all its jobs and files (needs --yes)"
    )
    remove.add_argument("name")
    remove.add_argument("--yes", action="store_true", help="yes, delete it and all it has")
    remove.set_defaults(func=cmd_user_delete)
    role = user_commands.add_parser("role", help="make a user an admin, or a user again")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "user"])
    role.set_defaults(func=cmd_user_role)
    passwd = user_commands.add_parser(
        "passwd", help="set a user's password (from stdin if piped); its sessions end"
    )
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_user_passwd)
    add_quota_command(user_commands)

    backup = commands.add_parser(
        "backup", help="copy the embedded deployment's data dir, while it runs, to DEST"
    )
    backup.add_argument("dest", help="an empty or new directory outside the data dir")
    backup.set_defaults(func=cmd_backup)

    from chute.client.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_quota(raw: str) -> int | None:
    """`default` (None), or a number of bytes with an optional unit: 500MiB, 20GB, 0."""
    text = raw.strip().lower().replace(" ", "")
    if text == "default":
        return None
    digits = text.rstrip("kmgtib")
    unit = text[len(digits) :]
    if not digits.isascii() or not digits.isdigit() or unit not in UNITS or len(digits) > 19:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a size: give bytes (like 500MiB, 20GB or 0 for none) or default"
        )
    return int(digits) * UNITS[unit]


def cmd_user_quota(args: argparse.Namespace) -> int:
    """Show a user's storage quota and use, or set it (DESIGN §8), in the database."""
    from chute.upload import quota

    def action(settings: Settings, session: Session) -> str:
        user = _named(session, args.name)
        if args.size is not _SHOW:
            quota.set_override(session, user.id, args.size)
        usage = quota.usage_of(session, settings, user.id)
        limit = "no quota" if usage.quota is None else f"quota {usage.quota} bytes"
        source = (
            "the default (CHUTE_USER_QUOTA_BYTES)"
            if user.quota_bytes is None
            else "set for this user"
        )
        reserved = f", {usage.reserved} more reserved by unfinished uploads"
        return (
            f"'{clean(user.username)}': {limit}, {source}; uses {usage.stored} bytes"
            + (reserved if usage.reserved else "")
            + "."
        )

    return _user_command(action)


_SHOW = object()


def add_quota_command(user_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quota = user_commands.add_parser(
        "quota",
        help="show or set a user's storage quota: BYTES (500MiB, 20GB; 0: none) or default",
    )
    quota.add_argument("name")
    quota.add_argument("size", nargs="?", type=parse_quota, default=_SHOW)
    quota.set_defaults(func=cmd_user_quota)
