"""The identity provider's users in Chute's database (`user_for_identity`), on SQLite and
PostgreSQL: (issuer, subject) is the user, created once however many requests race."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chute.auth.oidc import Identity
from chute.auth.service import USERNAME_MAX, add_user, authenticate, user_for_identity
from chute.db.models import User
from chute.errors import ChuteError

ISSUER = "https://id.example.com"


def test_a_user_is_created_once_and_found_again(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        made = user_for_identity(session, Identity(ISSUER, "sub-1", "alice"))
        assert (made.username, made.password_hash) == ("alice", "")
        assert (made.oidc_issuer, made.oidc_subject) == (ISSUER, "sub-1")
    with sessions() as session:
        # The claim changed at the provider: the user keeps its id and its name.
        again = user_for_identity(session, Identity(ISSUER, "sub-1", "alice.smith"))
        assert (again.id, again.username) == (made.id, "alice")
        assert session.scalar(select(User).where(User.oidc_subject == "sub-1")) is not None


def test_the_same_subject_of_another_issuer_is_another_user(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        first = user_for_identity(session, Identity(ISSUER, "sub-1", "alice"))
        other = user_for_identity(session, Identity("https://other.example.com", "sub-1", "alice"))
        assert other.id != first.id
        assert other.username == "alice-2"


def test_names_are_made_unique_and_printable(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        add_user(session, "bob", "a password")
        names = [
            user_for_identity(session, Identity(ISSUER, f"bob-{i}", "bob")).username
            for i in range(3)
        ]
        assert names == ["bob-2", "bob-3", "bob-4"]
        odd = user_for_identity(session, Identity(ISSUER, "odd", "\x1b[2J ev\nil "))
        assert odd.username == "[2J evil"
        blank = user_for_identity(session, Identity(ISSUER, "the-subject", " \x07 "))
        assert blank.username == "the-subject"
        long = user_for_identity(session, Identity(ISSUER, "long", "n" * 300))
        assert len(long.username) <= USERNAME_MAX


def test_a_crowded_name_still_gets_a_user(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        for suffix in ["", *(f"-{i}" for i in range(2, 20))]:
            add_user(session, f"carol{suffix}", "a password")
        crowded = user_for_identity(session, Identity(ISSUER, "carol-sub", "carol"))
        assert crowded.username.startswith("carol-") and len(crowded.username) == 14


def test_the_provider_users_have_no_password(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        user_for_identity(session, Identity(ISSUER, "sub-1", "dave"))
        for password in ("", "!", "dave"):
            with pytest.raises(ChuteError):
                authenticate(session, "dave", password)


def test_requests_racing_on_a_new_user_make_one(sessions: sessionmaker[Session]) -> None:
    def sign_in(_: int) -> int:
        with sessions() as session:
            return user_for_identity(session, Identity(ISSUER, "racer", "racer")).id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(sign_in, range(16)))
    assert len(ids) == 1
    with sessions() as session:
        assert len(session.scalars(select(User).where(User.oidc_subject == "racer")).all()) == 1


def test_the_database_refuses_a_second_row_for_one_identity(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        user_for_identity(session, Identity(ISSUER, "sub-1", "erin"))
        session.add(
            User(username="erin-copy", password_hash="", oidc_issuer=ISSUER, oidc_subject="sub-1")
        )
        with pytest.raises(IntegrityError):
            session.commit()
