"""Limits on password guesses, per user name and per client address (DESIGN §2).

`signin_max_failures` failures of one name or one address within `signin_window`
seconds block it for `signin_block` seconds; every further failure before the streak is
forgotten blocks it again for twice as long as the last time (up to `signin_max_block`).
A success forgets the failures of its name and its address. A blocked sign-in answers
429 with Retry-After, the same for a name that exists and one that does not (names are
counted whether or not they exist), and costs no password hash.

The counters live in the database so the limits hold across API processes and hosts.
An attempt is counted as a failure *before* its password is checked, in one short
transaction holding the rows' locks (SQLite's write lock, PostgreSQL's row locks taken
in key order, so two attempts never deadlock); a success then forgets it. So a burst of
parallel guesses cannot all pass the check before the first of them is counted: the
limit is exact however many processes answer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from chute.config import Settings
from chute.db.models import SigninFailures
from chute.errors import ChuteError, Problem


@dataclass(frozen=True)
class SigninLimits:
    max_failures: int
    window: timedelta
    first_block: timedelta
    max_block: timedelta

    @classmethod
    def of(cls, settings: Settings) -> SigninLimits:
        return cls(
            max_failures=settings.signin_max_failures,
            window=timedelta(seconds=settings.signin_window),
            first_block=timedelta(seconds=settings.signin_block),
            max_block=timedelta(seconds=settings.signin_max_block),
        )


def keys_for(username: str, address: str | None) -> list[str]:
    """The counters one sign-in attempt counts against: its user name and its address."""
    keys = [_key("name", username)]
    if address:
        keys.append(_key("address", _address_block(address)))
    return keys


def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode(errors="surrogatepass")).hexdigest()


def _address_block(address: str) -> str:
    """An IPv6 client is counted by its /64: one host is usually given a whole /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def count_attempt(
    session: Session, keys: Sequence[str], limits: SigninLimits, now: datetime
) -> None:
    """Count a sign-in attempt as a failure, unless a key is blocked: then raise the 429.

    Commits. Call `forgive` when the password turns out right.
    """
    ordered = sorted(set(keys))
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for key in ordered:
        session.execute(
            insert(SigninFailures)
            .values(key=key, failures=0, window_start=now, block_seconds=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["key"])
        )
    rows = session.scalars(
        select(SigninFailures)
        .where(SigninFailures.key.in_(ordered))
        .order_by(SigninFailures.key)
        .with_for_update()
    ).all()
    blocked = [row.blocked_until for row in rows if row.blocked_until and row.blocked_until > now]
    if blocked:
        session.rollback()
        wait = math.ceil((max(blocked) - now).total_seconds())
        raise ChuteError(Problem.SIGNIN_THROTTLED, retry_after=wait)
    for row in rows:
        _count(row, limits, now)
    session.commit()


def _count(row: SigninFailures, limits: SigninLimits, now: datetime) -> None:
    # After a block, the streak lasts until a whole window passes with no new failure,
    # so the next failure blocks again (for twice as long) rather than starting over.
    after_block = row.blocked_until is not None and row.blocked_until + limits.window > now
    if not after_block and row.window_start + limits.window <= now:
        row.failures, row.window_start, row.block_seconds, row.blocked_until = 0, now, 0, None
    row.failures += 1
    row.updated_at = now
    if row.failures >= limits.max_failures:
        first, most = limits.first_block.total_seconds(), limits.max_block.total_seconds()
        row.block_seconds = int(min(most, 2 * row.block_seconds if row.block_seconds else first))
        row.blocked_until = now + timedelta(seconds=row.block_seconds)


def forgive(session: Session, keys: Sequence[str]) -> None:
    """A sign-in succeeded: forget the failures of its name and its address. Commits."""
    session.execute(delete(SigninFailures).where(SigninFailures.key.in_(sorted(set(keys)))))
    session.commit()


def purge(session: Session, limits: SigninLimits, now: datetime) -> int:
    """Delete counters that no longer count: no failure and no block within a window."""
    cutoff = now - limits.window
    result = session.execute(
        delete(SigninFailures).where(
            SigninFailures.updated_at <= cutoff,
            or_(SigninFailures.blocked_until.is_(None), SigninFailures.blocked_until <= cutoff),
        )
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
