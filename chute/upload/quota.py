"""Per-user storage quotas (DESIGN §8): what a user's bytes count, and the check made
before any byte of theirs is stored.

What counts, all read from the database (no walk of the storage):
- an unfinished upload (chunks, tus, a tus partial upload): its recorded bytes, or the
  whole file when its size is known (`file_size`, tus `Upload-Length`; for chunks without
  `file_size`, the least the file can be once the chunk size is known). So an upload that
  cannot fit is refused at its first chunk, not at 95 %, and two uploads in parallel
  cannot both be promised the same room;
- a complete upload's file (the job's input), unless its job was cancelled (then the
  file is removed);
- the files a succeeded job made (`jobs.outputs`, sizes recorded by the worker). The
  worker is never refused: the job already ran. What it wrote counts towards the next
  upload, which may then be refused.

The check: a request that would raise what the user counts past their quota answers 507
(`QUOTA_EXCEEDED`). A request that adds nothing (a chunk of an upload whose size was
counted already, a re-sent chunk) goes through even when the user is past the quota
(an admin lowered it, outputs came): an upload once accepted is not stopped halfway.

Requests still streaming are counted too, by the `QuotaLedger` of the process they run
in, so parallel chunks checked at once see each other. Another API process's requests
are not in this ledger; for them the record of a chunk checks again in the database
(`check_record`), under a lock of the user's row, so no chunk is recorded that takes
the user past the quota. Between processes, then, a chunk's bytes may be written and
refused at its record: they are never recorded, and the client is told 507. A tus
creation counts recorded bytes and reservations, under the same lock (`check_new`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chute.config import Settings
from chute.db.models import Chunk, Job, JobStatus, TusPartial, Upload, User
from chute.db.users import get_user
from chute.errors import ChuteError, Problem

T = TypeVar("T")
log = logging.getLogger(__name__)

# The most a quota can be: a 64-bit signed integer, as the column holds it.
MAX_QUOTA = 2**63 - 1


@dataclass(frozen=True)
class Usage:
    """A user's bytes. `stored` is held on storage now; `reserved` is what their
    unfinished uploads of a known size still have to send. Both count against `quota`."""

    quota: int | None
    stored: int
    reserved: int

    @property
    def counted(self) -> int:
        return self.stored + self.reserved


@dataclass(frozen=True)
class Unfinished:
    """An unfinished upload: bytes recorded, and the least its whole file is (0: unknown)."""

    received: int
    floor: int

    @property
    def counted(self) -> int:
        return max(self.received, self.floor)


@dataclass(frozen=True)
class _Held:
    """What the database holds of a user: files that are whole, and unfinished uploads by
    key (`job:<id>`, `partial:<tus id>`)."""

    whole: int
    open: dict[str, Unfinished]

    def usage(self, quota: int | None) -> Usage:
        received = sum(o.received for o in self.open.values())
        counted = sum(o.counted for o in self.open.values())
        return Usage(quota, self.whole + received, counted - received)


def job_key(job_id: int) -> str:
    return f"job:{job_id}"


def effective(settings: Settings, override: int | None) -> int | None:
    """A user's quota: an admin's override, else CHUTE_USER_QUOTA_BYTES; None: no quota.
    0 means no quota in both places, so an admin can lift the default for one user."""
    quota = settings.user_quota_bytes if override is None else override
    return quota or None


def upload_floor(upload: Upload) -> int:
    """The least an unfinished upload's file can be, as far as the upload is bound to it."""
    return _floor(
        upload.protocol,
        upload.chunks_received,
        upload.file_size,
        upload.chunk_size,
        upload.total_chunks,
    )


def _floor(
    protocol: str,
    chunks_received: int,
    file_size: int | None,
    chunk_size: int | None,
    total_chunks: int | None,
) -> int:
    """A tus upload is bound to its length from its creation. A chunk upload binds
    nothing until a chunk is recorded (a refused request leaves nothing behind,
    `chute.upload.chunks`); then its `file_size`, or its chunk size times all chunks but
    the last (each such chunk has exactly that size)."""
    if protocol == "tus":
        return file_size or 0
    if chunks_received == 0:
        return 0
    return chunk_floor(file_size, chunk_size, total_chunks)


def chunk_floor(file_size: int | None, chunk_size: int | None, total_chunks: int | None) -> int:
    if file_size is not None:
        return file_size
    if chunk_size is not None and total_chunks is not None:
        return chunk_size * (total_chunks - 1)
    return 0


def _held(session: Session, user_id: int) -> _Held:
    owned = Job.user_id == user_id
    whole = session.scalar(
        select(func.coalesce(func.sum(Upload.bytes_received), 0))
        .join(Job, Job.id == Upload.job_id)
        # A cancelled job's input is removed.
        .where(owned, Upload.completed_at.is_not(None), Job.status != JobStatus.CANCELLED)
    )
    whole = int(whole or 0)
    open_: dict[str, Unfinished] = {}
    rows = session.execute(
        select(
            Upload.job_id,
            Upload.bytes_received,
            Upload.protocol,
            Upload.chunks_received,
            Upload.file_size,
            Upload.chunk_size,
            Upload.total_chunks,
        )
        .join(Job, Job.id == Upload.job_id)
        .where(owned, Upload.completed_at.is_(None))
    )
    for job_id, received, protocol, chunks, file_size, chunk_size, total in rows:
        floor = _floor(protocol, chunks, file_size, chunk_size, total)
        open_[job_key(job_id)] = Unfinished(received, floor)
    outputs = session.scalars(
        select(Job.outputs).where(Job.user_id == user_id, Job.outputs.is_not(None))
    )
    for files in outputs:
        whole += sum(int(f.get("size", 0)) for f in (files or {}).values())
    partials = session.execute(
        select(TusPartial.tus_id, TusPartial.bytes_received, TusPartial.length).where(
            TusPartial.user_id == user_id
        )
    )
    for tus_id, received, length in partials:
        open_[f"partial:{tus_id}"] = Unfinished(received, length)
    return _Held(whole, open_)


def _user(session: Session, user_id: int, *, lock: bool) -> User | None:
    query = select(User).where(User.id == user_id)
    return session.scalar(query.with_for_update() if lock else query)


def usage_of(session: Session, settings: Settings, user_id: int) -> Usage:
    user = _user(session, user_id, lock=False)
    quota = effective(settings, None if user is None else user.quota_bytes)
    return _held(session, user_id).usage(quota)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _refuse(before: int, after: int, quota: int) -> ChuteError:
    return ChuteError(
        Problem.QUOTA_EXCEEDED,
        need=_human(after - before),
        used=_human(before),
        quota=_human(quota),
    )


def _judge(user_id: int, before: int, after: int, quota: int | None) -> None:
    """Refuse what raises the count past the quota; what adds nothing always passes."""
    if quota is not None and after > before and after > quota:
        log.info(
            "user %s: refused by the storage quota (%s bytes counted, %s more asked, quota %s)",
            user_id, before, after - before, quota, extra={"user_id": user_id},
        )  # fmt: skip
        raise _refuse(before, after, quota)


def check_new(session: Session, settings: Settings, user_id: int, length: int) -> None:
    """Before a tus upload (or partial upload) of `length` bytes is created, in its
    transaction: the user's row is locked, so two creations of one user are judged one
    after the other, each seeing the other's reservation."""
    user = _user(session, user_id, lock=True)
    if user is None:
        return
    quota = effective(settings, user.quota_bytes)
    if quota is None:
        return
    before = _held(session, user_id).usage(quota).counted
    _judge(user_id, before, before + length, quota)


def check_record(
    session: Session,
    settings: Settings,
    user_id: int,
    key: str,
    before: Unfinished,
    after: Unfinished,
) -> None:
    """When a chunk is recorded (its job and upload locked): the database's count of the
    user, with upload `key` going from `before` to `after`, must not pass the quota."""
    user = _user(session, user_id, lock=False)
    if user is None or (quota := effective(settings, user.quota_bytes)) is None:
        return
    _user(session, user_id, lock=True)
    held = _held(session, user_id)
    others = held.whole + sum(o.counted for k, o in held.open.items() if k != key)
    _judge(user_id, others + before.counted, others + after.counted, quota)


def unfinished(upload: Upload) -> Unfinished:
    return Unfinished(upload.bytes_received, upload_floor(upload))


@dataclass(frozen=True)
class Flight:
    """A request that may store bytes, while it streams: `size` bytes at most for the
    upload `key` (0: a re-send, stored already), which it says is at least `floor` bytes."""

    key: str
    size: int
    floor: int = 0


class QuotaLedger:
    """The requests of this process still streaming, by user, so that parallel chunks of
    one user are judged with each other. One per process (`Runtime.quota_ledger`)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._flights: dict[int, list[Flight]] = {}

    def user_lock(self, user_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(user_id, threading.Lock())

    def reserve(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        user_id: int,
        flight: Flight,
        recorded: tuple[int, int] | None = None,
    ) -> Reservation:
        """Hold `flight` in the ledger until the reservation is settled or released, or
        refuse it (507) if it would take the user past their quota. `recorded`: the (job
        id, index) of a chunk that counts already if it is recorded (a re-send adds none)."""
        with self.user_lock(user_id):
            with sessions() as session:
                user = _user(session, user_id, lock=False)
                quota = effective(settings, None if user is None else user.quota_bytes)
                held = None if quota is None else _held(session, user_id)
                if held is not None and recorded and session.get(Chunk, recorded) is not None:
                    flight = Flight(flight.key, 0, flight.floor)
                session.commit()
            if held is not None:
                flights = self._flights.get(user_id, [])
                _judge(user_id, _count(held, flights), _count(held, [*flights, flight]), quota)
            with self._guard:
                self._flights.setdefault(user_id, []).append(flight)
        return Reservation(self, user_id, flight)

    def drop(self, user_id: int, flight: Flight) -> None:
        with self._guard:
            flights = self._flights[user_id]
            flights.remove(flight)
            if not flights:
                del self._flights[user_id]

    def in_flight(self, user_id: int) -> int:
        """Bytes the user's requests in this process may still store."""
        with self._guard:
            return sum(f.size for f in self._flights.get(user_id, []))


class Reservation:
    """A flight held in the ledger. `settle` runs the record that makes its bytes count in
    the database and drops the flight as one step for the user's checks, so no check
    counts those bytes twice (recorded, and still streaming) or not at all."""

    def __init__(self, ledger: QuotaLedger, user_id: int, flight: Flight) -> None:
        self.ledger = ledger
        self.user_id = user_id
        self.flight = flight
        self.held = True

    def settle(self, record: Callable[[], T]) -> T:
        with self.ledger.user_lock(self.user_id):
            try:
                return record()
            finally:
                self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.ledger.drop(self.user_id, self.flight)


def _count(held: _Held, flights: list[Flight]) -> int:
    """What the user counts with these requests streaming: each upload the most of its
    recorded bytes plus those streaming to it, and the least its file can be."""
    sizes: dict[str, int] = {}
    floors: dict[str, int] = {}
    for f in flights:
        sizes[f.key] = sizes.get(f.key, 0) + f.size
        floors[f.key] = max(floors.get(f.key, 0), f.floor)
    total = held.whole
    for key in held.open.keys() | sizes.keys():
        known = held.open.get(key, Unfinished(0, 0))
        total += max(known.received + sizes.get(key, 0), known.floor, floors.get(key, 0))
    return total


def set_override(session: Session, user_id: int, quota_bytes: int | None) -> User:
    """An admin's quota for one user (None: back to CHUTE_USER_QUOTA_BYTES; 0: none)."""
    if quota_bytes is not None and not 0 <= quota_bytes <= MAX_QUOTA:
        raise ChuteError(
            Problem.INVALID_FIELD, what=f"quota_bytes must be between 0 and {MAX_QUOTA}"
        )
    user = get_user(session, user_id, lock=True)
    user.quota_bytes = quota_bytes
    session.commit()
    return user
