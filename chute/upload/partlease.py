"""One writer per part, across API processes and machines, through the database.

Local disk has its own part locks (file locks, see `chute.storage.local`). An object
store reached by API processes on several machines has none: two requests sending the
same index at once would both upload the part, the store would keep whichever finished
last, and the database might name the other one's checksum. So for such storage a
request first takes a lease on (upload, index) in the database:

- taking it is an INSERT of the lease row, which the primary key lets only one request
  win, or an UPDATE of a row whose holder stopped renewing it (a process that died);
- the holder renews it in a background thread while it streams the part;
- it is deleted when the request ends.

A holder that fails to renew (the database unreachable for a whole lease, so another
request may have taken over) learns it through `Lease.lost` and must not commit.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chute.db.models import PartLease, utcnow

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.05


@dataclass
class Lease:
    storage_id: str
    index: int
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)

    def still_held(self) -> bool:
        return not self.lost.is_set()


class PartLeases:
    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float) -> None:
        self.sessions = sessions
        self.lease_seconds = lease_seconds

    @contextlib.contextmanager
    def lock_part(self, storage_id: str, index: int, timeout: float) -> Iterator[Lease]:
        """Hold the lease of one part; TimeoutError if another holder keeps it `timeout` s."""
        lease = self._take(storage_id, index, timeout)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(lease, stop), name="chute-part-lease", daemon=True
        )
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            self._release(lease)

    def _take(self, storage_id: str, index: int, timeout: float) -> Lease:
        lease = Lease(storage_id, index, secrets.token_hex(16))
        deadline = time.monotonic() + timeout
        while True:
            if self._try_take(lease):
                return lease
            if time.monotonic() >= deadline:
                raise TimeoutError(f"part {index} is leased")
            time.sleep(RETRY_SECONDS)

    def _try_take(self, lease: Lease) -> bool:
        now = utcnow()
        with self.sessions() as session:
            stale = now - timedelta(seconds=self.lease_seconds)
            taken_over = session.execute(  # type: ignore[attr-defined]
                update(PartLease)
                .where(
                    PartLease.storage_id == lease.storage_id,
                    PartLease.index == lease.index,
                    PartLease.renewed_at < stale,
                )
                .values(holder=lease.holder, renewed_at=now)
            ).rowcount
            if taken_over:
                session.commit()
                log.warning(
                    "part %s of upload %s: took over a lease its holder stopped renewing",
                    lease.index,
                    lease.storage_id,
                )
                return True
            if session.get(PartLease, (lease.storage_id, lease.index)) is not None:
                session.rollback()
                return False
            session.add(
                PartLease(
                    storage_id=lease.storage_id,
                    index=lease.index,
                    holder=lease.holder,
                    renewed_at=now,
                )
            )
            try:
                session.commit()
            except IntegrityError:  # another request inserted it first
                session.rollback()
                return False
            return True

    def _renew(self, lease: Lease, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            try:
                with self.sessions() as session:
                    kept = session.execute(
                        update(PartLease)
                        .where(
                            PartLease.storage_id == lease.storage_id,
                            PartLease.index == lease.index,
                            PartLease.holder == lease.holder,
                        )
                        .values(renewed_at=utcnow())
                    ).rowcount  # type: ignore[attr-defined]
                    session.commit()
            except Exception:
                # Try again at the next renewal; others take over only after a whole lease.
                log.exception("part %s: renewing its lease failed", lease.index)
                continue
            if not kept:
                lease.lost.set()
                return

    def _release(self, lease: Lease) -> None:
        try:
            with self.sessions() as session:
                session.execute(
                    delete(PartLease).where(
                        PartLease.storage_id == lease.storage_id,
                        PartLease.index == lease.index,
                        PartLease.holder == lease.holder,
                    )
                )
                session.commit()
        except Exception:
            # Left behind, the row is taken over once stale, and the sweeper removes it.
            log.exception("part %s: releasing its lease failed", lease.index)

    def remove_stale(self, older_than: float) -> int:
        """Delete leases not renewed for `older_than` seconds (their holders died)."""
        with self.sessions() as session:
            removed = session.execute(
                delete(PartLease).where(
                    PartLease.renewed_at < utcnow() - timedelta(seconds=older_than)
                )
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        return int(removed or 0)
