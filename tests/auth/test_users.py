"""Managing users (`chute.auth.users`) on SQLite and PostgreSQL: the admin rules (never
oneself, never the last enabled admin, even when two admins act at once), what disabling
and a new password end, and what deleting a user takes with it."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chute.auth import users
from chute.auth.service import authenticate, issue_token, user_for_token
from chute.db.models import (
    AuthToken,
    Chunk,
    Job,
    JobStatus,
    TokenKind,
    TusPartial,
    Upload,
    User,
    utcnow,
)
from chute.db.users import MAX_USER_ID
from chute.errors import ChuteError, Problem
from chute.storage.memory import MemoryStorage

PASSWORD = "a good password"


def refused(problem: Problem) -> pytest.RaisesExc[ChuteError]:
    return pytest.raises(ChuteError, check=lambda exc: exc.problem is problem)


def make(sessions: sessionmaker[Session], name: str, *, admin: bool = False) -> int:
    with sessions() as session:
        return users.create_user(session, name, PASSWORD, admin=admin).id


def test_names_and_passwords_are_checked(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        made = users.create_user(session, "  alice  ", PASSWORD, admin=True)
        assert (made.username, made.is_admin, made.disabled_at) == ("alice", True, None)
        for bad in ("", "   ", "a\x00b", "esc\x1b[2J", "new\nline", "rtl\u202eevil", "n" * 101):
            with refused(Problem.INVALID_FIELD) as caught:
                users.create_user(session, bad, PASSWORD)
            assert "printable" in caught.value.detail
        with refused(Problem.INVALID_FIELD) as caught:
            users.create_user(session, "bob", "")
        assert caught.value.detail == "password: must not be empty."
        with refused(Problem.INVALID_FIELD):
            users.create_user(session, "bob", "p" * (users.PASSWORD_MAX + 1))
        with refused(Problem.USER_EXISTS):
            users.create_user(session, "alice", "another password")
        names = [user.username for user in users.list_users(session)]
        assert names == ["alice"]


def test_unknown_ids_are_not_found(sessions: sessionmaker[Session]) -> None:
    make(sessions, "root", admin=True)
    with sessions() as session:
        for user_id in (0, -1, 999_999, MAX_USER_ID, MAX_USER_ID + 1, 2**63):
            with refused(Problem.USER_NOT_FOUND):
                users.disable_user(session, user_id, actor_id=None)
            with refused(Problem.USER_NOT_FOUND):
                users.enable_user(session, user_id)
            with refused(Problem.USER_NOT_FOUND):
                users.delete_user(session, user_id, actor_id=None)
        with refused(Problem.USER_NOT_FOUND):
            users.user_named(session, "nobody")


def test_an_admin_cannot_disable_or_delete_themselves(sessions: sessionmaker[Session]) -> None:
    root = make(sessions, "root", admin=True)
    make(sessions, "second", admin=True)
    with sessions() as session:
        with refused(Problem.USER_IS_YOU) as caught:
            users.disable_user(session, root, actor_id=root)
        assert caught.value.detail == "An admin cannot disable their own user; ask another admin."
        with refused(Problem.USER_IS_YOU):
            users.delete_user(session, root, actor_id=root)
        assert session.get(User, root) is not None
        assert session.get(User, root).disabled_at is None  # type: ignore[union-attr]


def test_the_last_enabled_admin_is_never_disabled_or_deleted(
    sessions: sessionmaker[Session],
) -> None:
    root = make(sessions, "root", admin=True)
    other = make(sessions, "other", admin=True)
    plain = make(sessions, "plain")
    with sessions() as session:
        # The command line acts as nobody: only the last-admin rule holds.
        users.disable_user(session, other, actor_id=None)
        with refused(Problem.LAST_ADMIN) as caught:
            users.disable_user(session, root, actor_id=None)
        assert "last enabled admin" in caught.value.detail
        with refused(Problem.LAST_ADMIN):
            users.delete_user(session, root, actor_id=None)
        # A plain user does not count; a disabled admin may go.
        users.disable_user(session, plain, actor_id=None)
        users.delete_user(session, other, actor_id=None)
        users.enable_user(session, plain)
        assert [(u.username, u.disabled_at) for u in users.list_users(session)] == [
            ("root", None),
            ("plain", None),
        ]
        again = users.create_user(session, "again", PASSWORD, admin=True).id
        users.disable_user(session, root, actor_id=again)
        with refused(Problem.LAST_ADMIN):
            users.delete_user(session, again, actor_id=None)


def test_two_admins_disabling_each_other_at_once_leave_one(
    sessions: sessionmaker[Session],
) -> None:
    for turn in range(5):
        a = make(sessions, f"a{turn}", admin=True)
        b = make(sessions, f"b{turn}", admin=True)
        with sessions() as session:  # only these two are enabled admins
            for user in users.list_users(session):
                if user.id not in (a, b) and user.disabled_at is None and user.is_admin:
                    users.disable_user(session, user.id, actor_id=None)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def disable(
            target: int,
            actor: int,
            barrier: threading.Barrier = barrier,
            outcomes: list[str] = outcomes,
        ) -> None:
            with sessions() as session:
                barrier.wait()
                try:
                    users.disable_user(session, target, actor_id=actor)
                    outcomes.append("done")
                except ChuteError as exc:
                    outcomes.append(exc.problem.name)
                except Exception as exc:  # a deadlock, say: the rule's locks failed
                    outcomes.append(repr(exc))

        threads = [
            threading.Thread(target=disable, args=(b, a)),
            threading.Thread(target=disable, args=(a, b)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["LAST_ADMIN", "done"]
        with sessions() as session:
            enabled = session.scalar(
                select(func.count())
                .select_from(User)
                .where(User.is_admin.is_(True), User.disabled_at.is_(None))
            )
            assert enabled == 1


def test_admins_are_made_and_unmade_by_the_same_rules(sessions: sessionmaker[Session]) -> None:
    root = make(sessions, "root", admin=True)
    bob = make(sessions, "bob")
    with sessions() as session:
        with refused(Problem.LAST_ADMIN) as caught:
            users.set_admin(session, root, False, actor_id=None)
        assert "before you demote it" in caught.value.detail
        assert users.set_admin(session, bob, True, actor_id=root).is_admin is True
        assert users.set_admin(session, bob, True, actor_id=root).is_admin is True  # again
        with refused(Problem.USER_IS_YOU):
            users.set_admin(session, bob, False, actor_id=bob)
        assert users.set_admin(session, root, False, actor_id=bob).is_admin is False
        with refused(Problem.LAST_ADMIN):
            users.set_admin(session, bob, False, actor_id=None)
        with refused(Problem.USER_NOT_FOUND):
            users.set_admin(session, 999_999, True, actor_id=None)


def test_disabling_ends_sessions_and_tokens_for_good(sessions: sessionmaker[Session]) -> None:
    make(sessions, "root", admin=True)
    bob = make(sessions, "bob")
    with sessions() as session:
        user = session.get(User, bob)
        assert user is not None
        bearer = issue_token(session, user, TokenKind.BEARER, 3600)
        cookie = issue_token(session, user, TokenKind.SESSION, 3600)
        assert user_for_token(session, bearer, TokenKind.BEARER, utcnow()) is not None
        users.disable_user(session, bob, actor_id=None)
        users.disable_user(session, bob, actor_id=None)  # again: no change, no error
        assert user_for_token(session, bearer, TokenKind.BEARER, utcnow()) is None
        assert user_for_token(session, cookie, TokenKind.SESSION, utcnow()) is None
        assert session.scalar(select(func.count()).where(AuthToken.user_id == bob)) == 0
        with refused(Problem.USER_DISABLED):
            authenticate(session, "bob", PASSWORD)
        with refused(Problem.BAD_CREDENTIALS):  # a wrong password learns nothing
            authenticate(session, "bob", "wrong")
        users.enable_user(session, bob)
        assert authenticate(session, "bob", PASSWORD).id == bob
        # What was issued before stays dead.
        assert user_for_token(session, bearer, TokenKind.BEARER, utcnow()) is None


def test_a_new_password_ends_the_old_sessions(sessions: sessionmaker[Session]) -> None:
    bob = make(sessions, "bob")
    with sessions() as session:
        user = session.get(User, bob)
        assert user is not None
        bearer = issue_token(session, user, TokenKind.BEARER, 3600)
        users.set_password(session, bob, "the new one")
        assert user_for_token(session, bearer, TokenKind.BEARER, utcnow()) is None
        assert authenticate(session, "bob", "the new one").id == bob
        with refused(Problem.BAD_CREDENTIALS):
            authenticate(session, "bob", PASSWORD)
        with refused(Problem.INVALID_FIELD):
            users.set_password(session, bob, "")


def test_deleting_a_user_takes_all_theirs_and_nothing_of_others(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The database side: rows cascade; what storage holds of the user is returned, and
    `remove_files` removes it (on a real server's storage: tests/api/test_users_api.py)."""
    bob = make(sessions, "bob")
    carol = make(sessions, "carol")
    storage = MemoryStorage()
    output = tmp_path / "data.parquet"
    output.write_bytes(b"parquet")
    with sessions() as session:
        jobs = {}
        for owner in (bob, carol):
            job = Job(user_id=owner, name="j", kind="profile", status=JobStatus.UPLOADING)
            session.add(job)
            session.flush()
            upload_id = storage.begin(f"jobs/{job.id}/input.csv")
            session.add(Upload(job_id=job.id, storage_id=upload_id, total_chunks=2))
            session.flush()
            session.add(Chunk(job_id=job.id, index=0, size=1, sha256="0" * 64))
            tus_id = f"{owner:032x}"
            session.add(
                TusPartial(
                    tus_id=tus_id,
                    user_id=owner,
                    storage_id=storage.begin(f"tus-partials/{tus_id}"),
                    length=10,
                    part_size=10,
                )
            )
            session.add(
                AuthToken(
                    user_id=owner,
                    kind=TokenKind.BEARER,
                    token_hash=f"{owner:064x}",
                    expires_at=utcnow() + timedelta(hours=1),
                )
            )
            storage.put_file(f"jobs/{job.id}/data.parquet", output)
            output.write_bytes(b"parquet")
            jobs[owner] = job.id
        session.commit()
        before = storage.pending()
        assert len(before) == 4 and len(storage.keys()) == 2

        found = users.delete_user(session, bob, actor_id=None)
        assert found.job_ids == [jobs[bob]]
        assert len(found.leftovers.uploads) == 2  # the job's upload and the tus partial
        users.remove_files(storage, found)
        users.remove_files(storage, found)  # again: nothing left, nothing fails
        assert set(storage.pending()) == set(before) - set(found.leftovers.uploads)
        assert storage.keys() == {f"jobs/{jobs[carol]}/data.parquet"}

        assert session.get(User, bob) is None
        for table in (Job, TusPartial, AuthToken):
            assert set(session.scalars(select(table.user_id))) == {carol}, table
        assert set(session.scalars(select(Upload.job_id))) == {jobs[carol]}
        assert set(session.scalars(select(Chunk.job_id))) == {jobs[carol]}
