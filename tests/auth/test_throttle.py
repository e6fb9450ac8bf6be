"""The sign-in limits and the purge of expired sign-ins, in-process on a real database
(SQLite, and PostgreSQL when it runs): time is passed in, so nothing sleeps."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chute.auth import service, throttle
from chute.auth.service import add_user, issue_token, purge_expired, sign_in, user_for_token
from chute.auth.throttle import SigninLimits
from chute.db.models import AuthToken, SigninFailures, TokenKind, utcnow
from chute.errors import ChuteError, Problem

LIMITS = SigninLimits(
    max_failures=5,
    window=timedelta(minutes=15),
    first_block=timedelta(seconds=60),
    max_block=timedelta(seconds=300),
)
PASSWORD = "right-password"


@pytest.fixture
def user(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        return add_user(session, "alice", PASSWORD).username


def attempt(
    sessions: sessionmaker[Session],
    name: str,
    password: str,
    now: datetime,
    address: str | None = "192.0.2.1",
) -> int:
    """200, 401 or 429, as the route would answer."""
    with sessions() as session:
        try:
            sign_in(session, name, password, address=address, limits=LIMITS, now=now)
        except ChuteError as exc:
            return exc.status
    return 200


def retry_after(sessions: sessionmaker[Session], name: str, now: datetime) -> int:
    """The Retry-After of a sign-in refused as blocked (from an address of its own)."""
    with sessions() as session, pytest.raises(ChuteError) as caught:
        sign_in(session, name, PASSWORD, address="198.51.100.7", limits=LIMITS, now=now)
    assert caught.value.problem is Problem.SIGNIN_THROTTLED
    return int(caught.value.headers["Retry-After"])


def test_the_block_doubles_on_each_further_failure_up_to_the_limit(
    sessions: sessionmaker[Session], user: str
) -> None:
    now = utcnow()
    assert [attempt(sessions, user, "wrong", now) for _ in range(5)] == [401] * 5
    assert retry_after(sessions, user, now) == 60
    assert retry_after(sessions, user, now + timedelta(seconds=45)) == 15
    # The block over, one more failure blocks again, for twice as long.
    now += timedelta(seconds=61)
    assert attempt(sessions, user, "wrong", now) == 401
    assert retry_after(sessions, user, now) == 120
    now += timedelta(seconds=121)
    assert attempt(sessions, user, "wrong", now) == 401
    assert retry_after(sessions, user, now) == 240
    now += timedelta(seconds=241)
    assert attempt(sessions, user, "wrong", now) == 401
    assert retry_after(sessions, user, now) == 300  # signin_max_block
    # A whole window after the block with no failure: the streak is forgotten.
    now += timedelta(seconds=300) + LIMITS.window
    assert [attempt(sessions, user, "wrong", now) for _ in range(4)] == [401] * 4
    assert attempt(sessions, user, PASSWORD, now) == 200


def test_failures_older_than_the_window_do_not_count(
    sessions: sessionmaker[Session], user: str
) -> None:
    start = utcnow()
    assert [attempt(sessions, user, "wrong", start) for _ in range(4)] == [401] * 4
    later = start + LIMITS.window
    assert [attempt(sessions, user, "wrong", later) for _ in range(4)] == [401] * 4
    assert attempt(sessions, user, PASSWORD, later) == 200


def test_a_blocked_sign_in_checks_no_password(
    sessions: sessionmaker[Session], user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = service.verify_password

    def counting(password_hash: str | None, password: str) -> bool:
        checked.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(service, "verify_password", counting)
    now = utcnow()
    for name in (user, "nobody"):
        for _ in range(5):
            attempt(sessions, name, "wrong", now, address=None)
    assert len(checked) == 10
    assert attempt(sessions, user, PASSWORD, now, address=None) == 429
    assert attempt(sessions, "nobody", PASSWORD, now, address=None) == 429
    assert len(checked) == 10


def test_parallel_guesses_get_no_more_than_the_limit(
    sessions: sessionmaker[Session], user: str
) -> None:
    """Sixteen guesses at once, as from several API processes: five are checked."""
    now = utcnow()
    answers: list[int] = []
    start = threading.Barrier(16)

    def guess() -> None:
        start.wait()
        answers.append(attempt(sessions, user, "wrong", now))

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [401] * 5 + [429] * 11


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    same = throttle.keys_for("x", "2001:db8:1:2::1")[1]
    assert throttle.keys_for("x", "2001:db8:1:2:ffff::9")[1] == same
    assert throttle.keys_for("x", "2001:db8:1:3::1")[1] != same
    assert throttle.keys_for("x", "::ffff:192.0.2.1") == throttle.keys_for("x", "192.0.2.1")


def test_a_name_no_user_can_have_is_refused_like_any_other(
    sessions: sessionmaker[Session], user: str
) -> None:
    # PostgreSQL refuses a NUL in a query: the name must not reach it.
    now = utcnow()
    for name in ("al\x00ice", "\ud800", "x" * 10_000):
        assert attempt(sessions, name, PASSWORD, now) == 401


def test_purge_removes_expired_tokens_and_old_failures_only(
    sessions: sessionmaker[Session], user: str
) -> None:
    now = utcnow()
    with sessions() as session:
        alice = service.authenticate(session, user, PASSWORD)
        live = issue_token(session, alice, TokenKind.BEARER, 3600)
        dead = issue_token(session, alice, TokenKind.SESSION, 60)
    # Failures: one forgotten long ago, one blocked a while back, one recent.
    attempt(sessions, "old", "wrong", now - 2 * LIMITS.window, address=None)
    for _ in range(5):
        attempt(sessions, "blocked", "wrong", now - LIMITS.window + timedelta(seconds=30), None)
    attempt(sessions, "recent", "wrong", now, address=None)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(SigninFailures)) == 3
        removed = purge_expired(session, LIMITS, now + timedelta(seconds=61))
        assert removed == 2  # the session that expired, and "old"'s failures
        assert user_for_token(session, live, TokenKind.BEARER, now) is not None
        assert session.scalar(select(func.count()).select_from(AuthToken)) == 1
        assert user_for_token(session, dead, TokenKind.SESSION, now) is None
        assert session.scalar(select(func.count()).select_from(SigninFailures)) == 2
    # What the purge kept still counts: "blocked" is within a window of its block, so
    # its next failure blocks it again, for twice as long; "recent" has one failure.
    assert attempt(sessions, "blocked", "wrong", now, address=None) == 401
    assert retry_after(sessions, "blocked", now) == 120
    assert [attempt(sessions, "recent", "wrong", now, address=None) for _ in range(4)] == [401] * 4
    assert attempt(sessions, "recent", "wrong", now, address=None) == 429
